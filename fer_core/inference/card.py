"""`best.json`: what inference needs to know about a unit's `best.pt`, beside it.

`best.pt` holds weights only (it loads with `torch.load(weights_only=True)`); without this
file a user would have to know the backbone, the class order, the input size, the
normalisation and how faces were cropped to use it. Written atomically once the unit has
finished; `checkpoint_sha256` ties it to the exact `best.pt` it describes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict, cast

import torch

import fer_core
from fer_core.errors import FerError
from fer_core.io import atomic_write_text
from fer_core.models.backbones import NORMALISATIONS, backbone_spec
from fer_core.provenance import library_versions
from fer_core.records import LibraryVersions

CARD = "best.json"
FORMAT = 1
# What FerNet itself takes: fer_core.data.augment.test_transform's output.
MODEL_INPUT = (
    "float32 N x 3 x S x S (S = input_size), RGB, the face crop resized to S (bilinear, "
    "antialiased) and scaled to 0..1, then (x - ImageNet mean) / ImageNet std; the model "
    "converts that to the backbone's `normalisation` itself"
)


class CropInfo(TypedDict):
    """How the unit's face crops were made (from its face cache's `faces.json`)."""

    detector: str | None
    crop_size: int | None
    margin: float | None
    crop_method: int | None


class ModelCard(LibraryVersions):
    """`best.json`, keys in file order. A card of an older version may lack some keys;
    `read_card` requires the five inference cannot do without."""

    format: int
    checkpoint: str
    checkpoint_sha256: str | None
    unit_id: str
    dataset: str
    fold: int
    n_folds: int
    backbone: str
    strategy: str
    stage: int
    seed: int
    selection: str
    weights: str
    classes: list[str]
    input_size: int
    model_input: str
    input_norm: str
    normalisation: dict[str, Any]  # fer_core.models.backbones.Normalisation as a dict
    crop: CropInfo
    package_version: str
    torch_version: str
    written_at: float


def write_card(
    work_dir: Path, spec: Mapping[str, Any], classes: list[str], input_size: int
) -> None:
    """Write `work_dir/best.json` for the unit `spec` (a UnitSpec as a dict)."""
    work_dir = Path(work_dir)
    digests = _read_json(work_dir / "checkpoints.json")
    crop = _read_json(Path(spec["data_dir"]) / "faces.json")
    backbone = backbone_spec(spec["backbone"])
    config = spec.get("config") or {}
    card: ModelCard = {
        "format": FORMAT,
        "checkpoint": "best.pt",
        "checkpoint_sha256": digests.get("best.pt"),
        "unit_id": spec["unit_id"],
        "dataset": spec["dataset"],
        "fold": spec["fold"],
        "n_folds": spec["n_folds"],
        "backbone": spec["backbone"],
        "strategy": spec["strategy"],
        "stage": spec["stage"],
        "seed": config.get("seed", 0),
        "selection": config.get("selection", "heldout"),
        "weights": spec["weights"],
        "classes": list(classes),
        "input_size": int(input_size),
        "model_input": MODEL_INPUT,
        "input_norm": backbone.input_norm,
        "normalisation": NORMALISATIONS[backbone.input_norm].to_dict(),
        "crop": {
            "detector": crop.get("detector"),
            "crop_size": crop.get("crop_size"),
            "margin": crop.get("margin"),
            "crop_method": crop.get("crop_method"),
        },
        "package_version": fer_core.__version__,
        "torch_version": torch.__version__,
        **library_versions(),
        "written_at": time.time(),
    }
    atomic_write_text(work_dir / CARD, json.dumps(card, indent=1) + "\n")


def read_card(work_dir: Path) -> ModelCard:
    """The card beside a unit's `best.pt`, or a FerError saying why there is none."""
    path = Path(work_dir) / CARD
    if not path.is_file():
        raise FerError(
            f"{path}: no model description; the unit has not finished, or was trained by a "
            "version before checkpoints described themselves (re-run it)"
        )
    card = _read_json(path)
    missing = [k for k in ("backbone", "classes", "input_size", "crop", "unit_id") if k not in card]
    if missing:
        raise FerError(f"{path}: not a model description (no {missing[0]!r})")
    return cast(ModelCard, card)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FerError(f"{path}: cannot be read as JSON ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise FerError(f"{path}: not a JSON object")
    return value
