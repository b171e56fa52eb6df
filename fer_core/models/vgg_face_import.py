"""Converting the published VGG-Face weights into torchvision's VGG-16 key layout.

The VGG-Face authors publish the network for Caffe, Torch7 and MatConvNet. The MatConvNet
file (`vgg_face.mat`, or the MatConvNet model zoo's `vgg-face.mat`) is plain MATLAB data that
scipy reads, so it is the one converted here. (The Torch7 `VGG_FACE.t7` needs a Lua-object
reader; none installs from PyPI alongside this project's pins, so it is not supported.)

What the file holds: a list of layers (`layers`, at the top level or inside `net`), each a
struct with `name`, `type` (`conv`, `relu`, `pool`, `dropout`, `softmax`) and, for `conv`,
`weights` = {filters H x W x Cin x Cout, biases Cout}; fc6-fc8 are convolutions too (fc6 a
7 x 7 one over the last 512-channel map). MatConvNet networks take RGB: its import from Caffe
reversed the first layer's channels, and its demos subtract `averageImage` (the R, G, B mean)
from RGB pixels. The converted file keeps the original Caffe/Torch7 convention instead, BGR
0..255 minus the mean (`NORMALISATIONS["vgg_face"]`), so that it is interchangeable with the
common PyTorch ports of those files: conv1_1's input channels are reversed back here.

Mapping: the i-th conv layer -> `features.{k}` (k = its index in torchvision's `vgg16().features`),
fc6/fc7/fc8 -> `classifier.0/3/6` (fc6's filters flattened in torchvision's C, H, W order).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch

from fer_core.errors import FerError
from fer_core.io import atomic_torch_save
from fer_core.models.backbones import BACKBONES, VGG_FACE_MEAN_RGB
from fer_core.models.weights import pretrained_candidates

# Indices of the convolutions in torchvision's vgg16().features (ReLU and max-pool between).
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG16_FC_KEYS = ("classifier.0", "classifier.3", "classifier.6")


class ImportSummary(TypedDict):
    """What `import_vgg_face` wrote."""

    path: str
    tensors: int
    parameters: int
    classes: int  # VGG-Face's identity classes (the fc8 that training replaces)
    mean_rgb: list[float] | None  # the file's mean pixel, when it records one


def vgg_face_cache_path() -> Path:
    """Where `weights: pretrained` looks for the converted file (`$TORCH_HOME/hub/checkpoints`)."""
    return pretrained_candidates(BACKBONES["vgg_face"])[0]


def import_vgg_face(source: str | Path, out: str | Path | None = None) -> ImportSummary:
    """Convert `source` (a MatConvNet vgg_face.mat) and write it to `out` (default: the cache).

    Returns a summary: the output path, the number of tensors and parameters, the file's
    mean pixel and class count. Nothing is written unless the whole file converts.
    """
    source = Path(source)
    out = Path(out) if out is not None else vgg_face_cache_path()
    if not source.is_file():
        raise FerError(f"vgg_face: {source} is not an existing file; give the path of vgg_face.mat")
    if source.suffix.lower() == ".t7":
        raise FerError(
            f"vgg_face: {source} is a Torch7 file, which cannot be read here (no Lua-object "
            "reader installs with this project); use the MatConvNet vgg_face.mat instead"
        )
    layers, meta = _read_mat(source)
    state = convert_layers(layers, source)
    mean = _mean_pixel(meta)
    if mean is not None and not np.allclose(mean, VGG_FACE_MEAN_RGB, atol=1e-3):
        raise FerError(
            f"vgg_face: {source} has mean pixel {mean.round(4).tolist()}, not VGG-Face's "
            f"{list(VGG_FACE_MEAN_RGB)}; it is another network, whose input normalisation "
            "this project would get wrong"
        )
    atomic_torch_save(state, out)
    return {
        "path": str(out),
        "tensors": len(state),
        "parameters": sum(v.numel() for v in state.values()),
        "classes": int(state["classifier.6.bias"].shape[0]),
        "mean_rgb": None if mean is None else mean.tolist(),
    }


def convert_layers(layers: Iterable[Any], source: Path) -> dict[str, torch.Tensor]:
    """A torchvision-layout VGG-16 state dict from MatConvNet layer structs (BGR input)."""
    convs = [layer for layer in layers if _field(layer, "type") == "conv"]
    if len(convs) != len(VGG16_CONV_INDICES) + len(VGG16_FC_KEYS):
        raise FerError(
            f"vgg_face: {source} has {len(convs)} convolution layers; VGG-Face (VGG-16) has "
            f"{len(VGG16_CONV_INDICES)} plus 3 fully connected (fc6-fc8 as convolutions)"
        )
    state: dict[str, torch.Tensor] = {}
    keys = [f"features.{i}" for i in VGG16_CONV_INDICES] + list(VGG16_FC_KEYS)
    for position, (layer, key) in enumerate(zip(convs, keys, strict=True)):
        filters, biases = _weights(layer, source)
        name = _field(layer, "name")
        if filters.ndim == 2:  # a 1 x 1 x Cin x Cout filter bank saved squeezed
            filters = filters[None, None]
        if filters.ndim != 4:
            raise FerError(f"vgg_face: {source}: layer {name} has filters of shape {filters.shape}")
        weight = torch.from_numpy(np.ascontiguousarray(filters.transpose(3, 2, 0, 1)))
        if position == 0:
            weight = weight.flip(1)  # RGB (MatConvNet) -> BGR (the original weights)
        if key.startswith("classifier"):
            weight = weight.reshape(weight.shape[0], -1)  # C, H, W order, as torch.flatten
        elif filters.shape[:2] != (3, 3):
            raise FerError(f"vgg_face: {source}: layer {name} is not a 3 x 3 convolution")
        bias = torch.from_numpy(np.ascontiguousarray(biases.reshape(-1)))
        if bias.shape[0] != weight.shape[0]:
            raise FerError(f"vgg_face: {source}: layer {name} has mismatched filters and biases")
        state[f"{key}.weight"] = weight.float().contiguous()
        state[f"{key}.bias"] = bias.float().contiguous()
    return state


def _read_mat(source: Path) -> tuple[np.ndarray, Any]:
    from scipy.io import loadmat

    try:
        data = loadmat(str(source), squeeze_me=True, struct_as_record=False)
    except Exception as exc:  # not MATLAB data, or a v7.3 (HDF5) file
        raise FerError(
            f"vgg_face: {source} cannot be read as a MATLAB file ({type(exc).__name__}: "
            f"{exc}); give the MatConvNet vgg_face.mat"
        ) from None
    root = data.get("net", data)
    layers = _field(root, "layers")
    if layers is None:
        raise FerError(f"vgg_face: {source} has no `layers` (nor `net.layers`); not MatConvNet")
    meta = _field(root, "meta")
    return np.atleast_1d(layers), root if meta is None else meta


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _weights(layer: Any, source: Path) -> tuple[np.ndarray, np.ndarray]:
    weights = _field(layer, "weights")
    if weights is not None and len(weights) == 2:
        return np.asarray(weights[0]), np.asarray(weights[1])
    filters, biases = _field(layer, "filters"), _field(layer, "biases")  # older MatConvNet
    if filters is None or biases is None:
        raise FerError(f"vgg_face: {source}: layer {_field(layer, 'name')} has no weights")
    return np.asarray(filters), np.asarray(biases)


def _mean_pixel(meta: Any) -> np.ndarray | None:
    """The R, G, B mean of `normalization.averageImage` (a pixel or a whole mean image)."""
    average = _field(_field(meta, "normalization"), "averageImage")
    if average is None:
        return None
    average = np.asarray(average, dtype=np.float64)
    return average.reshape(-1, 3).mean(axis=0) if average.size >= 3 else None
