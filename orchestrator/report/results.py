"""The results of the current grid, read from a run directory for the report.

Only units of the current `dag.json` count: the store may still hold rows of units from an
older version of the grid (another fold rule, other hyper-parameters), and mixing them in
would silently average two experiments. The DAG also says what *should* exist, so a partial
run can show "7/10 folds" rather than pretend its 7 folds are the study.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fer_core.data.folds import FOLD_RULES
from fer_core.errors import FerError
from orchestrator.plan.unit import Unit
from orchestrator.report.aggregate import Group
from orchestrator.run.rundir import RunDir

PREDICTION_COLUMNS = ("unit_id", "label", "predicted", "label_name")


@dataclass(frozen=True)
class DatasetInfo:
    """What the grid says about a dataset (known before any unit has run)."""

    name: str
    kind: str  # ckplus | oulu | manifest
    synthetic: bool
    prepare_id: str
    n_folds: int = 10
    fold_rule: str = FOLD_RULES[0]  # how sorted subjects became folds (D-9)


@dataclass
class Results:
    """The current grid's units and whatever rows of them the store holds."""

    rundir: RunDir
    info: dict[str, Any]
    units: list[Unit]
    done: set[str]
    runs: list[dict[str, Any]]
    prepare: dict[str, dict[str, Any]]  # dataset name -> its prepare row
    datasets: dict[str, DatasetInfo]
    expected: dict[tuple[Group, str], set[int]] = field(default_factory=dict)

    @property
    def train_units(self) -> list[Unit]:
        return [u for u in self.units if u.kind == "train"]

    @property
    def points(self) -> dict[str, tuple[str, ...]]:
        """Unit id -> the sweep points it serves (units of a sweep only)."""
        return {u.id: u.points for u in self.units if u.points}

    @property
    def sweep_points(self) -> list[str]:
        """The grid's sweep points in the sweep's order; empty without a sweep."""
        return list(dict.fromkeys(p for u in self.units for p in u.points))

    def kind_of(self, dataset: str) -> str:
        info = self.datasets.get(dataset)
        return info.kind if info else dataset

    def is_synthetic(self, dataset: str) -> bool:
        info = self.datasets.get(dataset)
        return bool(info and info.synthetic)

    def predictions(self, unit_ids: list[str]) -> pa.Table | None:
        """Label/prediction columns of these units' test images (None if none stored)."""
        store = self.rundir.store
        tables = [
            pq.read_table(store.path("predictions", uid), columns=list(PREDICTION_COLUMNS))
            for uid in unit_ids
            if store.path("predictions", uid).is_file()
        ]
        if not tables:
            return None
        return pa.concat_tables(tables, promote_options="default")


def _selection_of(unit: Unit) -> str:
    return str(unit.spec.get("config", {}).get("selection") or "heldout")


def _read_rows(rundir: RunDir, table: str, unit_ids: set[str]) -> list[dict[str, Any]]:
    data = rundir.store.read(table, unit_ids)
    return [] if data is None else data.to_pylist()


def load_results(run_dir: str | Path) -> Results:
    """Read `run_dir`'s DAG and the store rows of its units."""
    path = Path(run_dir)
    if not path.is_dir():
        raise FerError(f"run dir {path} does not exist; pass --run-dir of a launched grid")
    rundir = RunDir(path)
    units = rundir.read_dag()
    info_path = rundir.info_path
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    done = {u.id for u in units if rundir.store.is_done(u.id, u.kind)}

    datasets = {
        u.dataset: DatasetInfo(
            u.dataset,
            str(u.spec.get("dataset", u.dataset)),
            bool(u.spec.get("synthetic")),
            u.id,
            int(u.spec.get("n_folds") or 10),
            str(u.spec.get("fold_rule") or FOLD_RULES[0]),
        )
        for u in units
        if u.kind == "prepare"
    }
    train_ids = {u.id for u in units if u.kind == "train"}
    runs = _read_rows(rundir, "runs", train_ids)
    prepare_rows = _read_rows(rundir, "prepare", {d.prepare_id for d in datasets.values()})
    by_id = {row["unit_id"]: row for row in prepare_rows}
    prepare = {name: by_id[d.prepare_id] for name, d in datasets.items() if d.prepare_id in by_id}

    expected: dict[tuple[Group, str], set[int]] = {}
    for unit in (u for u in units if u.kind == "train"):
        for point in unit.points or ("",):
            group = Group(unit.dataset, unit.backbone, _selection_of(unit), point)
            expected.setdefault((group, unit.strategy), set()).add(unit.fold)
    return Results(rundir, info, units, done, runs, prepare, datasets, expected)
