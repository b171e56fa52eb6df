"""Datasets for the library: raw layouts -> index with folds -> cached face crops -> batches.

Modules: `folds` (subject-independent folds), `index` (dataset adapters, Parquet index,
fingerprint), `synth` (synthetic CK+/Oulu twins), `faces` (MTCNN crops, cached), `augment`
(batched GPU augmentation). Kept import-light: torch and facenet load only in `faces` and
`augment`, so scanning a dataset does not pay for them.
"""
