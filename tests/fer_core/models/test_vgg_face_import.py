"""VGG-Face: its input normalisation, and the importer of the published MatConvNet file.

The importer is tested on a synthetic file of the published structure (a MatConvNet
`layers` cell array of conv/relu/pool/dropout/softmax structs and a `meta` struct) with
VGG-16's geometry but a few channels per layer, so that it stays small: the converted
weights must compute, in torchvision's layout on BGR input, what the file computes by
MatConvNet's rules on RGB input.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import scipy.io
import torch
import torchvision
from torch import nn

from fer_core.data.augment import test_transform
from fer_core.errors import FerError
from fer_core.models import BACKBONES, FerNet, TinyCNN
from fer_core.models.backbones import VGG_FACE_MEAN_RGB
from fer_core.models.vgg_face_import import import_vgg_face
from fer_core.models.weights import resolve_pretrained
from tests.helpers import REPO

# VGG-16's blocks of 3 x 3 convolutions, each followed by a 2 x 2 max-pool; widths shrunk.
BLOCKS = ((2, 2), (3, 3), (4, 4, 4), (4, 4, 4), (5, 5, 5))
FC, IDENTITIES = 6, 5  # fc6/fc7 width and fc8 outputs (the real file: 4096 and 2622)
SIZE = 224  # the five pools leave 7 x 7, fc6's filter size


def _preprocessing(input_norm: str, x: torch.Tensor) -> torch.Tensor:
    spec = replace(BACKBONES["tiny"], input_norm=input_norm)
    model = FerNet(spec, TinyCNN(), num_classes=7)
    return model.backbone_input(test_transform(x, x.shape[-1]))


def test_vgg_face_preprocessing_is_bgr_0_255_minus_the_mean_pixel():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    by_hand = torch.empty(2, 3, 8, 8)
    r, g, b = (x[:, c].float() for c in range(3))
    by_hand[:, 0] = b - 93.5940  # B minus the blue mean
    by_hand[:, 1] = g - 104.7624
    by_hand[:, 2] = r - 129.1863  # R minus the red mean
    assert BACKBONES["vgg_face"].input_norm == "vgg_face"
    assert torch.allclose(_preprocessing("vgg_face", x), by_hand, atol=2e-4)


@pytest.mark.parametrize(
    ("input_norm", "by_hand"),
    [
        ("inception", lambda x: x / 255 * 2 - 1),
        ("facenet", lambda x: (x - 127.5) / 128),
        (
            "imagenet",
            lambda x: (
                (x / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
                / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
            ),
        ),
    ],
)
def test_other_backbones_keep_their_rgb_normalisation(input_norm, by_hand):
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    assert torch.allclose(_preprocessing(input_norm, x), by_hand(x.float()), atol=1e-5)


# --- a synthetic vgg_face.mat --------------------------------------------------------------------
def _cell(items: list) -> np.ndarray:
    cell = np.empty((1, len(items)), dtype=object)
    for i, item in enumerate(items):
        cell[0, i] = item
    return cell


def _conv(name: str, h: int, w: int, cin: int, cout: int, rng, pad: int) -> dict:
    filters = rng.standard_normal((h, w, cin, cout)).astype(np.float32) * 0.3
    biases = rng.standard_normal((cout, 1)).astype(np.float32) * 0.1
    return {
        "name": name,
        "type": "conv",
        "weights": _cell([filters, biases]),
        "size": np.array([h, w, cin, cout], dtype=np.float64),
        "pad": np.array([pad] * 4, dtype=np.float64),
        "stride": np.array([1, 1], dtype=np.float64),
    }


def _write_mat(path, mean=VGG_FACE_MEAN_RGB, drop_last_conv=False) -> None:
    rng = np.random.default_rng(0)
    layers, cin = [], 3
    for block, widths in enumerate(BLOCKS, start=1):
        for i, cout in enumerate(widths, start=1):
            layers.append(_conv(f"conv{block}_{i}", 3, 3, cin, cout, rng, pad=1))
            layers.append({"name": f"relu{block}_{i}", "type": "relu"})
            cin = cout
        pool = np.array([2, 2], dtype=np.float64)
        layers.append(
            {
                "name": f"pool{block}",
                "type": "pool",
                "method": "max",
                "pool": pool,
                "stride": pool,
                "pad": np.zeros(4),
            }
        )
    layers.append(_conv("fc6", 7, 7, cin, FC, rng, pad=0))
    layers += [{"name": "relu6", "type": "relu"}, {"name": "dropout6", "type": "dropout"}]
    layers.append(_conv("fc7", 1, 1, FC, FC, rng, pad=0))
    layers += [{"name": "relu7", "type": "relu"}, {"name": "dropout7", "type": "dropout"}]
    layers.append(_conv("fc8", 1, 1, FC, IDENTITIES, rng, pad=0))
    layers.append({"name": "prob", "type": "softmax"})
    if drop_last_conv:
        layers = [layer for layer in layers if layer["name"] != "conv5_3"]
    meta = {
        "normalization": {
            "averageImage": np.array(mean, dtype=np.float32).reshape(1, 1, 3),
            "imageSize": np.array([SIZE, SIZE, 3], dtype=np.float64),
        },
        "classes": {
            "name": _cell([f"id{i}" for i in range(IDENTITIES)]),
            "description": _cell([f"Person {i}" for i in range(IDENTITIES)]),
        },
    }
    scipy.io.savemat(str(path), {"layers": _cell(layers), "meta": meta})


def _matconvnet_forward(path, image_rgb: np.ndarray) -> np.ndarray:
    """The file's network by MatConvNet's rules, in NumPy: H x W x C maps, filters
    H x W x Cin x Cout, the mean pixel subtracted from the RGB image."""
    data = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    x = image_rgb.astype(np.float64) - np.asarray(VGG_FACE_MEAN_RGB)
    for layer in data["layers"]:
        if layer.type == "conv":
            filters = np.asarray(layer.weights[0], dtype=np.float64)
            if filters.ndim == 2:
                filters = filters[None, None]
            kh, kw = filters.shape[:2]
            pad = int(np.atleast_1d(layer.pad)[0])
            padded = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
            height, width = padded.shape[0] - kh + 1, padded.shape[1] - kw + 1
            out = np.zeros((height, width, filters.shape[3]))
            for dy in range(kh):
                for dx in range(kw):
                    window = padded[dy : dy + height, dx : dx + width]
                    out += np.einsum("hwc,co->hwo", window, filters[dy, dx])
            x = out + np.asarray(layer.weights[1], dtype=np.float64).reshape(-1)
        elif layer.type == "relu":
            x = np.maximum(x, 0)
        elif layer.type == "pool":
            h, w, c = x.shape
            x = x.reshape(h // 2, 2, w // 2, 2, c).max(axis=(1, 3))
    return x.reshape(-1)  # fc8's 1 x 1 x IDENTITIES, before the softmax


class _SmallVgg(nn.Module):
    """torchvision's VGG-16 modules (make_layers, avgpool, classifier 0/3/6), narrower."""

    def __init__(self):
        super().__init__()
        cfg: list = []
        for widths in BLOCKS:
            cfg += [*widths, "M"]
        self.features = torchvision.models.vgg.make_layers(cfg)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(BLOCKS[-1][-1] * 49, FC),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(FC, FC),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(FC, IDENTITIES),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def test_import_round_trip_computes_what_the_mat_file_computes(tmp_path):
    source, out = tmp_path / "vgg_face.mat", tmp_path / "vgg_face.pth"
    _write_mat(source)
    summary = import_vgg_face(source, out)
    assert summary["path"] == str(out) and summary["classes"] == IDENTITIES
    assert summary["mean_rgb"] == pytest.approx(VGG_FACE_MEAN_RGB, abs=1e-4)
    state = torch.load(out, weights_only=True)

    with torch.device("meta"):
        reference_keys = set(torchvision.models.vgg16().state_dict())
    assert set(state) == reference_keys  # torchvision's VGG-16 key layout, fc8 included

    model = _SmallVgg().eval()
    model.load_state_dict(state, strict=True)
    image = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3)).astype(np.float64)
    expected = _matconvnet_forward(source, image)
    bgr = torch.from_numpy(image[:, :, ::-1].copy()).permute(2, 0, 1)[None].float()
    bgr = bgr - torch.tensor(VGG_FACE_MEAN_RGB[::-1]).view(1, 3, 1, 1)  # the BGR convention
    with torch.no_grad():
        got = model(bgr)[0].double().numpy()
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_import_command_writes_where_pretrained_looks(tmp_path, monkeypatch):
    source = tmp_path / "vgg_face.mat"
    _write_mat(source)
    home = tmp_path / "torch_home"
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "weights", "import", "vgg_face", str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "TORCH_HOME": str(home)},
    )
    assert result.returncode == 0, result.stderr
    expected = home / "hub" / "checkpoints" / "vgg_face-vgg16-bgr.pth"
    assert str(expected) in result.stdout
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    assert resolve_pretrained(BACKBONES["vgg_face"]) == expected


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"drop_last_conv": True}, "has 15 convolution layers"), ({"mean": (1, 2, 3)}, "mean pixel")],
)
def test_import_refuses_another_network_and_writes_nothing(tmp_path, kwargs, fragment):
    source, out = tmp_path / "other.mat", tmp_path / "out.pth"
    _write_mat(source, **kwargs)
    with pytest.raises(FerError, match=fragment):
        import_vgg_face(source, out)
    assert not out.exists()


def test_import_refuses_torch7_and_non_mat_files(tmp_path):
    t7, junk = tmp_path / "VGG_FACE.t7", tmp_path / "junk.mat"
    t7.write_bytes(b"\x00" * 16)
    junk.write_text("not matlab")
    with pytest.raises(FerError, match="Torch7 file"):
        import_vgg_face(t7, tmp_path / "a.pth")
    with pytest.raises(FerError, match="cannot be read as a MATLAB file"):
        import_vgg_face(junk, tmp_path / "b.pth")
