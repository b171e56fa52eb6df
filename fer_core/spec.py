"""The unit specs: the contracts between the orchestrator and the code that runs a unit,
`fer_core.unit.run_unit` (training) and `orchestrator.run.worker.prepare` (data preparation).

Plain data and no torch, so the orchestrator can build, hash and store specs without loading
the training stack.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar

from fer_core.errors import FerError

_Spec = TypeVar("_Spec", "UnitSpec", "PrepareSpec")
PROTOCOLS = ("kfold", "fixed")  # subject folds, or the dataset's own train/val/test split


def _from_dict(cls: type[_Spec], what: str, values: dict[str, Any]) -> _Spec:
    """`cls(**values)`, naming the first unknown or missing key instead of a TypeError."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise FerError(f"{what}: unknown key {unknown[0]!r}")
    missing = [
        name
        for name, f in known.items()
        if name not in values and f.default is MISSING and f.default_factory is MISSING
    ]
    if missing:
        raise FerError(f"{what}: missing key {missing[0]!r}")
    return cls(**values)


@dataclass(frozen=True, kw_only=True)
class UnitSpec:
    """What `run_unit` accepts: everything that determines a unit's result (its id is a hash
    of this, minus paths) and where its inputs are. The orchestrator builds it (one builder,
    `orchestrator.plan.dag.train_spec`, for launch and tune) and keeps its JSON form
    (`dataclasses.asdict`, fields in this order) in the run dir's `spec.json`; `from_dict`
    reads that back."""

    unit_id: str
    grid: str = ""
    dataset: str
    data_dir: str  # the prepared dataset (faces.pt)
    fold: int  # the test fold; 0 on a fixed split (no folds)
    n_folds: int = 10
    protocol: str = "kfold"  # kfold | fixed (fer_core.data.protocol)
    holdout_fraction: float = 0.1  # fixed, no val split: the training split held out to select
    holdout_seed: int = 0
    backbone: str
    weights: str = "none"
    input_size: int | None = None
    device: str = "auto"
    strategy: str  # the chain up to and including this stage, e.g. "ce>focal"
    stage: int
    config: dict[str, Any] = field(default_factory=dict)  # StageConfig fields
    parent_id: str | None = None
    parent_dir: str | None = None  # the parent unit's work dir (holds its best.pt)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> UnitSpec:
        return _from_dict(cls, "unit spec", values)


@dataclass(frozen=True, kw_only=True)
class PrepareSpec:
    """What a data-preparation unit does: index a dataset's raw tree (generating a synthetic
    twin there first if asked) and crop its faces into `out_dir`. Built by
    `orchestrator.plan.dag.expand`; its JSON form (`asdict`, fields in this order) is the
    `spec` of the unit's `spec.json`, and `from_dict` reads it back. Its unit's id hashes the
    dataset's content and the crop settings, never these paths."""

    dataset: str  # the dataset kind: ckplus, oulu, manifest
    name: str  # the grid's name for the dataset
    root: str  # the raw tree (a synthetic twin's is generated there)
    manifest: str | None  # a manifest dataset's CSV (None: root/manifest.csv)
    synthetic: bool
    image_size: list[int] | None  # a synthetic twin's frame [width, height]; None: default
    crop_size: int
    detector: str  # mtcnn | center
    n_folds: int
    fold_rule: str = "interleaved"  # fer_core.data.folds.FOLD_RULES (absent from older specs)
    out_dir: str  # the prepared dataset: index.parquet, faces.pt, faces.json
    options: dict[str, str] = field(default_factory=dict)  # the kind's (fer_core.data.wild)
    scale: float | None = None  # a fixed-split twin's size (1: the real split sizes)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PrepareSpec:
        return _from_dict(cls, "prepare spec", values)
