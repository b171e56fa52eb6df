"""Exported models compute what the PyTorch model computes, for every input normalisation
(VGG-Face's channel reversal included), whatever the batch size."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from fer_core.evaluate import predict
from fer_core.inference.export import export_units
from fer_core.models import BACKBONES, FerNet, TinyCNN, backbone_spec, build_model
from fer_core.models.backbones import NORMALISATIONS

SIZE = 48
CLASSES = ["anger", "happy", "sadness"]


def _model(input_norm: str) -> FerNet:
    torch.manual_seed(0)
    model = FerNet(replace(BACKBONES["tiny"], input_norm=input_norm), TinyCNN(), len(CLASSES))
    torch.nn.init.normal_(model.head.weight, std=0.5)  # a head that separates the classes
    return model.eval()


def _card(input_norm: str) -> dict:
    return {
        "unit_id": "u1", "fold": 1, "dataset": "d", "strategy": "ce", "backbone": "tiny",
        "classes": CLASSES, "input_size": SIZE, "package_version": "0",
        "crop": {"detector": "mtcnn", "crop_size": SIZE, "margin": 0.2, "crop_method": 1},
        "normalisation": NORMALISATIONS[input_norm].to_dict(),
    }  # fmt: skip


def _run(fmt: str, out, x: torch.Tensor):
    if fmt == "torchscript":
        return torch.jit.load(str(out / "model.pt"))(x).detach()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    return torch.from_numpy(session.run(None, {"image": x.numpy()})[0])


@pytest.mark.parametrize(
    ("fmt", "input_norm"),
    [("onnx", n) for n in NORMALISATIONS] + [("torchscript", "vgg_face")],
)
def test_export_equals_the_pytorch_scoring_path(tmp_path, fmt, input_norm):
    model = _model(input_norm)
    description = export_units([model], [_card(input_norm)], fmt, tmp_path)
    assert description["parity_max_abs_diff"] <= 1e-4
    assert json.loads((tmp_path / "model.json").read_text())["classes"] == CLASSES
    crops = torch.randint(0, 256, (5, 3, SIZE, SIZE), dtype=torch.uint8)
    expected = predict(model, crops, SIZE)  # what training's evaluation computes
    got = _run(fmt, tmp_path, crops.float())
    assert torch.allclose(got, expected, atol=1e-4)
    assert torch.allclose(got.sum(dim=1), torch.ones(5), atol=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("backbone", ["timm:test_vit", "timm:test_convnext"])
def test_a_timm_backbone_exports_with_parity(tmp_path, backbone, fmt):
    """A ViT and a ConvNeXt from timm, at their pretrained input size and normalisation."""
    spec = backbone_spec(backbone)
    torch.manual_seed(0)
    model = build_model(backbone, len(CLASSES)).eval()
    torch.nn.init.normal_(model.head.weight, std=0.5)
    card = {**_card(spec.input_norm), "backbone": backbone, "input_size": spec.input_size}
    description = export_units([model], [card], fmt, tmp_path)
    assert description["parity_max_abs_diff"] <= 1e-4
    assert description["backbone"] == backbone and description["input_size"] == 160
    crops = torch.randint(0, 256, (3, 3, spec.input_size, spec.input_size), dtype=torch.uint8)
    expected = predict(model, crops, spec.input_size)
    assert torch.allclose(_run(fmt, tmp_path, crops.float()), expected, atol=1e-4)
