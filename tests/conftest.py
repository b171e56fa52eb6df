"""Shared fixtures: a small synthetic CK+ twin and its prepared face crops, built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# One thread per test process: the suite shares 2 cores with the worker processes that the
# backend tests start, and oversubscribed torch threads slow a tiny CNN down ~10x.
torch.set_num_threads(1)

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parent.parent
SMALL_IMAGE = (160, 120)  # the twin's frame size in tests (real CK+: 640 x 490)
CROP = 48


@pytest.fixture(scope="session")
def twin_root(tmp_path_factory) -> Path:
    """A CK+-layout synthetic twin (the real roster) at a small frame size."""
    from fer_core.data import synth

    root = tmp_path_factory.mktemp("twin") / "ckplus"
    synth.write_ckplus_twin(root, synth.DEFAULT_ROSTER, image_size=SMALL_IMAGE)
    return root


@pytest.fixture(scope="session")
def twin_faces(twin_root, tmp_path_factory) -> Path:
    """The twin's index and centre face crops (CROP px), as a training unit reads them."""
    from fer_core.data.faces import prepare_faces
    from fer_core.data.index import build_index

    out = tmp_path_factory.mktemp("faces")
    index = build_index("ckplus", twin_root)
    index.write(out / "index.parquet")
    prepare_faces(index, out, CROP, detector="center")
    return out


def write_grid(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


SMALL_GRID = """
name: small
seed: 0
folds: [1]
datasets:
  ckplus:
    kind: ckplus
    synthetic: true
    image_size: [96, 72]
    crop_size: 32
    detector: center
    focal: {alpha: 0.25, gamma: 0.0}
backbones:
  tiny: {weights: none, input_size: 32}
experiments:
  - backbones: [tiny]
    strategies: [ce, "ce>focal"]
train: {epochs: 2, lr_step_epoch: 1, batch_size: 32}
"""
