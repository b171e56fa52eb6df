"""Every attempt of a unit, however it ends, is one `resources` row that the worker measured
itself; `query` shows them with their unit's metadata, and `status` sums them."""

from __future__ import annotations

import json
import sys

import pytest

from orchestrator.query import run_query
from orchestrator.run import worker
from orchestrator.run.resources import resource_rows
from orchestrator.run.states import State
from orchestrator.run.usage import usage
from tests.helpers import prepare_run, small_grid, tiny_ckplus


@pytest.fixture
def run(tmp_path):
    """A claimed run dir with its DAG written (nothing run): prepare, s1f1, s2f1."""
    grid = tmp_path / "grid.yaml"
    root = tiny_ckplus(tmp_path / "ck", subjects=10)
    grid.write_text(small_grid(root=root, epochs=2, batch_size=8))  # an attempt per epoch
    return prepare_run(grid, tmp_path / "run")


def test_each_attempt_failed_interrupted_or_done_is_a_measured_row(run, monkeypatch):
    rundir, units = run
    stage1 = units["s1f1"]
    worker.run(rundir.path, units["prepare"].id)

    def broken(record):
        raise RuntimeError("boom")

    def interrupted(record):
        raise SystemExit(0)

    for job, hook, error in (("1", broken, RuntimeError), ("2", interrupted, SystemExit)):
        monkeypatch.setenv("FER_JOB_ID", job)
        with pytest.raises(error):
            worker.run(rundir.path, stage1.id, on_epoch=hook)
    monkeypatch.setenv("FER_JOB_ID", "3")
    worker.run(rundir.path, stage1.id)
    assert worker.run(rundir.path, stage1.id) == "already done"  # no attempt: no row

    rows = resource_rows(rundir)
    attempts = [r for r in rows if r["unit_id"] == stage1.id]
    assert [(r["attempt"], r["job_id"], r["state"]) for r in attempts] == [
        (1, "1", "failed"),
        (2, "2", "interrupted"),
        (3, "3", "done"),
    ]
    for row in rows:
        assert row["python"] == sys.executable and row["scheduler"] == "local"
        assert row["elapsed_s"] > 0 and row["max_rss_mb"] > 10 and row["cpus"] >= 1
        # CPU time counts in clock ticks (10 ms): an attempt shorter than one may show none
        assert 0 <= row["cpu_efficiency"] <= 1.05, row
        assert row["gpus"] == 0 and row["gpu_max_memory_mb"] is None

    found = json.loads(
        run_query(
            rundir.path,
            "SELECT kind, strategy, fold, attempt, state FROM resources ORDER BY kind, attempt",
            fmt="json",
        )
    )
    assert found == [
        {"kind": "prepare", "strategy": None, "fold": None, "attempt": 1, "state": "done"},
        *(
            {"kind": "train", "strategy": "ce", "fold": 1, "attempt": n, "state": state}
            for n, state in ((1, "failed"), (2, "interrupted"), (3, "done"))
        ),
    ]

    states = {u.id: State.DONE for u in units.values()} | {units["s2f1"].id: State.TODO}
    cost = usage(rundir, list(units.values()), states)
    assert cost.attempts == 4 and cost.gpu_hours == 0 and cost.cpu_hours > 0
    # stage 2 runs tiny at the measured input size: its epochs are estimated
    assert (cost.measured, cost.unmeasured) == (1, 0) and cost.left_s > 0
    assert cost.lines()[1].startswith("time to completion: ~")


def test_a_multi_rank_units_efficiency_sets_rank_0s_cpu_time_against_its_share(tmp_path):
    """The worker of a unit of several ranks is rank 0: its CPU time is one rank's, so it is
    set against one rank's share of the unit's CPUs (4 CPUs, 2 ranks: 2), not all 4."""
    from orchestrator.run.rundir import RunDir

    rundir = RunDir(tmp_path / "run")
    row = {
        "unit_id": "u", "kind": "train", "scheduler": "slurm", "job_id": "7", "requeue": 0,
        "node": "n", "python": sys.executable, "outcome": "done", "submitted_at": None,
        "started_at": 100.0, "ended_at": 110.0, "cpus": 4, "gpus": 0, "cpu_time_s": 10.0,
        "max_rss_mb": 100.0, "gpu_max_memory_mb": None, "gpu_utilisation_pct": None,
        "units_in_job": 1,
    }  # fmt: skip
    rundir.store.append("resources", "u", {**row, "ranks": 2})
    rundir.store.append("resources", "v", {**row, "unit_id": "v", "ranks": 1})
    efficiency = {r["unit_id"]: r["cpu_efficiency"] for r in resource_rows(rundir)}
    assert efficiency == {"u": pytest.approx(0.5), "v": pytest.approx(0.25)}
