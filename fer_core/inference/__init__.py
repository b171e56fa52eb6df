"""Using a trained unit outside training: what its checkpoint is, prediction, export.

- `card`: `best.json`, the description written beside every unit's `best.pt` (backbone,
  classes, input size, normalisation, face-crop settings, dataset, unit id, versions).
- `predict`: the same face crop as training, then the unit's model (or several folds' models
  averaged) on image files; plain rows out.
- `export`: TorchScript / ONNX files that take a face crop and return class probabilities,
  checked against the PyTorch model before they are kept.
"""
