"""A unit: one node of the DAG (orchestrator.plan.dag builds them) and one folder of the run
dir (orchestrator.run.rundir keeps them). A module of its own, so that the DAG can lay its
paths out with `RunDir` and `RunDir` can read the DAG back, without an import cycle."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Unit:
    """One job: prepare a dataset, or train one stage of one strategy on one fold.

    `spec` is what its worker runs, in its JSON form (`spec.json`, `dag.json`): the fields
    of a `fer_core.spec.PrepareSpec` or `UnitSpec` (`asdict`), parsed by the worker alone.
    JSON, not the dataclass: the report, the labels, lineage and tune read it by key, and a
    tune split hands a parent's spec to a Ray trial in this form."""

    id: str
    kind: str  # "prepare" | "train"
    name: str  # human-readable, e.g. "ckplus/f03/tiny/ce>focal"
    dataset: str
    deps: tuple[str, ...]
    spec: dict[str, Any]
    stage: int = 0
    fold: int = 0
    backbone: str = ""
    strategy: str = ""
    strategies: tuple[str, ...] = field(default_factory=tuple)  # grid strategies it serves
    # Sweep points it serves (`plan.overrides.point_label`, in the sweep's order); empty
    # without a sweep. Not part of the id: a unit no swept key changes serves every point.
    points: tuple[str, ...] = field(default_factory=tuple)
