"""The unit spec: the contract between the orchestrator and `fer_core.unit.run_unit`.

Plain data and no torch, so the orchestrator can build, hash and store specs without loading
the training stack.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from typing import Any

from fer_core.errors import FerError


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
    fold: int
    n_folds: int = 10
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
        fields = cls.__dataclass_fields__
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise FerError(f"unit spec: unknown key {unknown[0]!r}")
        missing = [
            name
            for name, f in fields.items()
            if name not in values and f.default is MISSING and f.default_factory is MISSING
        ]
        if missing:
            raise FerError(f"unit spec: missing key {missing[0]!r}")
        return cls(**values)
