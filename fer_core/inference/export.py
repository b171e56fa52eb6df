"""Exporting trained units as TorchScript or ONNX files that need no fer_core to run.

The exported model takes the face crop itself and returns class probabilities:

- input `image`: float32, N x 3 x S x S (NCHW), RGB, values 0..255 (a uint8 image cast to
  float), S = `input_size`; the face cropped as in training (`crop` in the JSON: MTCNN's
  largest face, its box's longer side widened by `margin`, squared, resized to `crop_size`
  (bilinear), then to S if that differs (bilinear, antialiased));
- output `probabilities`: float32 N x C, softmax over `classes` in the JSON's order.

Scaling to 0..1, the ImageNet normalisation and the backbone's own (`normalisation`: channel
order, scale, mean, std) are inside the model, so a user only crops and resizes. Several units
(folds) export as one model that averages their probabilities. Before a file is kept, it is
loaded back (TorchScript by torch, ONNX by onnxruntime) and run on sample inputs; the largest
absolute difference from the PyTorch model is reported, and over `TOLERANCE` nothing is kept.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypedDict

import torch
from torch import nn

from fer_core.data.augment import normalize
from fer_core.errors import FerError
from fer_core.inference.card import CropInfo, ModelCard
from fer_core.io import TEMP_PREFIX, atomic_write_text
from fer_core.models import FerNet

FORMATS = {"torchscript": "model.pt", "onnx": "model.onnx"}
TOLERANCE = 1e-4  # fp32: the same arithmetic, reordered at most
OPSET = 17
SAMPLES = 8  # sample inputs of the self-check, in batches of 1 and SAMPLES - 1
INPUT = (
    "float32 N x 3 x S x S (NCHW), RGB, values 0..255 (a uint8 image cast to float), "
    "S = input_size: the face crop (see crop), resized to S"
)
OUTPUT = "float32 N x C class probabilities (softmax), C = len(classes), in that order"


class ExportDescription(TypedDict):
    """`model.json` beside an exported model, keys in file order."""

    format: str
    file: str
    input: str
    input_name: str
    output: str
    output_name: str
    input_size: int
    classes: list[str]
    crop: CropInfo
    normalisation: dict[str, Any]
    normalisation_applied_inside: str
    backbone: str
    dataset: str
    strategy: str
    folds: list[int]
    units: list[str]
    package_version: str
    parity_max_abs_diff: float
    parity_samples: int


class ProbabilityModel(nn.Module):
    """RGB 0..255 crops at the input size -> class probabilities, averaged over `nets`.

    The same arithmetic as `fer_core.data.augment.test_transform` (at the input size its
    resize is the identity) followed by `fer_core.evaluate.predict`'s softmax.
    """

    def __init__(self, nets: Sequence[FerNet]):
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = normalize(image / 255)
        total = torch.softmax(self.nets[0](x), dim=1)
        for net in self.nets[1:]:
            total = total + torch.softmax(net(x), dim=1)
        return total / len(self.nets)


def export_units(
    nets: Sequence[FerNet], cards: Sequence[ModelCard], fmt: str, out_dir: Path
) -> ExportDescription:
    """Write `out_dir/model.{pt,onnx}` and `model.json`; returns the JSON's content, with
    `parity_max_abs_diff`, the largest |exported - PyTorch| probability on the samples."""
    if fmt not in FORMATS:
        raise FerError(f"--format {fmt!r}: not one of {', '.join(FORMATS)}")
    card = cards[0]
    model = ProbabilityModel([n.cpu().float().eval() for n in nets]).eval()
    size = int(card["input_size"])
    generator = torch.Generator().manual_seed(0)
    samples = torch.randint(0, 256, (SAMPLES, 3, size, size), generator=generator).float()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / FORMATS[fmt]
    tmp = out_dir / f"{TEMP_PREFIX}{final.name}"
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch marks both exporters used here deprecated (TorchScript; ONNX's TorchScript
            # path, which needs no onnxscript); the formats are what users ask for.
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)  # constants
            expected = model(samples)
            if fmt == "torchscript":
                got = _torchscript(model, samples, tmp)
            else:
                got = _onnx(model, samples, tmp)
        difference = float((got - expected).abs().max())
        if not difference <= TOLERANCE:
            raise FerError(
                f"export: the {fmt} model differs from the PyTorch model by up to {difference:.3g} "
                f"(> {TOLERANCE}) on sample inputs; nothing was kept"
            )
        tmp.replace(final)
    finally:
        tmp.unlink(missing_ok=True)
    description: ExportDescription = {
        "format": fmt,
        "file": final.name,
        "input": INPUT,
        "input_name": "image",
        "output": OUTPUT,
        "output_name": "probabilities",
        "input_size": size,
        "classes": card["classes"],
        "crop": card["crop"],
        "normalisation": card["normalisation"],
        "normalisation_applied_inside": "x/255, ImageNet mean/std, then `normalisation`",
        "backbone": card["backbone"],
        "dataset": card["dataset"],
        "strategy": card["strategy"],
        "folds": [c["fold"] for c in cards],
        "units": [c["unit_id"] for c in cards],
        "package_version": card["package_version"],
        "parity_max_abs_diff": difference,
        "parity_samples": SAMPLES,
    }
    atomic_write_text(out_dir / "model.json", json.dumps(description, indent=1) + "\n")
    return description


def _torchscript(model: nn.Module, samples: torch.Tensor, path: Path) -> torch.Tensor:
    # torch.jit's trace and load are unannotated
    traced = torch.jit.trace(model, samples[:2])  # type: ignore[no-untyped-call]
    traced.save(str(path))
    loaded = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    return torch.cat([loaded(samples[:1]), loaded(samples[1:])])


def fixed_pools(model: nn.Module, sample: torch.Tensor) -> nn.Module:
    """A copy of `model` whose adaptive average pools are fixed `AvgPool2d`s for the input
    size of `sample`, where that computes the same (equal windows at a constant stride).

    ONNX has no adaptive pool: the exporter handles only output sizes that divide the input
    (the tiny CNN pools 3 x 3 maps to 2 x 2: windows of 2 at stride 1). The self-check
    compares the exported model with the original, so a wrong replacement cannot be kept.
    """
    model = copy.deepcopy(model)
    sizes: dict[str, tuple[int, int]] = {}

    def record(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            height, width = args[0].shape[-2:]
            sizes.setdefault(name, (height, width))

        return hook

    hooks = [
        module.register_forward_pre_hook(record(name))
        for name, module in model.named_modules()
        if isinstance(module, nn.AdaptiveAvgPool2d)
    ]
    with torch.no_grad():
        model(sample)
    for hook in hooks:
        hook.remove()
    for name, size in sizes.items():
        module = model.get_submodule(name)
        assert isinstance(module, nn.AdaptiveAvgPool2d)  # recorded only for those
        output_size = module.output_size
        out = output_size if isinstance(output_size, tuple) else (output_size, output_size)
        windows = [_window(n, o if o is not None else n) for n, o in zip(size, out, strict=True)]
        if all(w is not None for w in windows):
            kernel, stride = zip(*windows, strict=True)
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf,
                    nn.AvgPool2d(kernel, stride))  # fmt: skip
    return model


def _window(size: int, out: int) -> tuple[int, int] | None:
    """(kernel, stride) of adaptive pooling `size` -> `out` if its windows are all alike."""
    starts = [i * size // out for i in range(out)]
    ends = [-(-(i + 1) * size // out) for i in range(out)]
    kernels = {e - s for s, e in zip(starts, ends, strict=True)}
    strides = {b - a for a, b in zip(starts, starts[1:], strict=False)} or {1}
    if len(kernels) != 1 or len(strides) != 1 or min(strides) < 1:
        return None
    return kernels.pop(), strides.pop()


def _onnx(model: nn.Module, samples: torch.Tensor, path: Path) -> torch.Tensor:
    import onnxruntime

    torch.onnx.export(
        fixed_pools(model, samples[:1]),
        (samples[:2],),
        str(path),
        dynamo=False,
        input_names=["image"],
        output_names=["probabilities"],
        dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
        opset_version=OPSET,
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = [
        session.run(None, {"image": batch.numpy()})[0] for batch in (samples[:1], samples[1:])
    ]
    return torch.cat([torch.from_numpy(o) for o in outputs])
