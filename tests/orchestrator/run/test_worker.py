"""The worker: the one path from a unit's spec.json to its records, whichever backend started
it. Idempotent; a failure leaves a one-line `failed.json` and re-raises; an interruption (a
requeue's SystemExit, Ctrl-C) is not a failure; what it says of the scheduler comes from the
scheduler's environment."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from fer_core.data.index import DatasetIndex
from orchestrator.report.document import write_report
from orchestrator.run import worker
from tests.helpers import prepare_run, small_grid, tiny_ckplus


@pytest.fixture
def run(tmp_path):
    """A claimed run dir with its DAG written (nothing run): prepare, s1f1, s2f1."""
    grid = tmp_path / "grid.yaml"
    root = tiny_ckplus(tmp_path / "ck", subjects=10)  # one per fold
    grid.write_text(small_grid(root=root, epochs=1, batch_size=8))
    return prepare_run(grid, tmp_path / "run")


def test_a_prepare_unit_runs_once_and_stores_its_row(run):
    rundir, units = run
    prepare = units["prepare"]
    assert worker.run(rundir.path, prepare.id) == "done"
    table = rundir.store.read("prepare")
    assert table is not None
    row = table.to_pylist()[0]
    assert row["unit_id"] == prepare.id and row["images"] == 30 and row["subjects"] == 10
    assert row["detector"] == "center" and row["synthetic"] is False
    written = rundir.store.path("prepare", prepare.id).stat().st_mtime_ns
    assert worker.run(rundir.path, prepare.id) == "already done"
    assert rundir.store.path("prepare", prepare.id).stat().st_mtime_ns == written


def test_a_prepare_unit_splits_by_the_grids_fold_rule_and_records_it(tmp_path):
    """`fold_rule: contiguous` reaches the preparation job: consecutive blocks of sorted
    subjects, recorded in the index, the prepare row and the report's method text."""
    grid = tmp_path / "grid.yaml"
    root = tiny_ckplus(tmp_path / "ck", subjects=6)
    text = small_grid(root=root, epochs=1, batch_size=8, n_folds=2)
    grid.write_text(text.replace("detector: center", "detector: center\n    fold_rule: contiguous"))
    rundir, units = prepare_run(grid, tmp_path / "run")
    assert worker.run(rundir.path, units["prepare"].id) == "done"
    index = DatasetIndex.read(Path(units["prepare"].spec["out_dir"]) / "index.parquet")
    assert index.fold_rule == "contiguous"
    folds = {r.subject: r.fold for r in index.records}
    assert [folds[s] for s in sorted(folds)] == [1, 1, 1, 2, 2, 2]
    row = rundir.store.read("prepare").to_pylist()[0]
    assert row["fold_rule"] == "contiguous"
    text = write_report(rundir.path).path.read_text()
    assert "fold_rule `contiguous`" in text and "consecutive blocks" in text


def test_a_training_unit_stores_its_rows_with_the_schedulers_columns(run, monkeypatch):
    rundir, units = run
    worker.run(rundir.path, units["prepare"].id)
    monkeypatch.setenv("FER_SCHEDULER", "ray")
    monkeypatch.setenv("FER_JOB_ID", "trial-7")
    seen = []
    assert worker.run(rundir.path, units["s1f1"].id, on_epoch=seen.append) == "done"
    assert [r["epoch"] for r in seen] == [1]
    table = rundir.store.read("runs")
    assert table is not None
    row = table.to_pylist()[0]
    assert (row["scheduler"], row["job_id"], row["requeues"]) == ("ray", "trial-7", 0)
    assert row["unit_label"] == units["s1f1"].name and row["variant"] == ""
    assert json.loads(rundir.live_path(units["s1f1"].id).read_text())["epoch"] == 1
    assert rundir.failure(units["s1f1"].id) is None


def test_a_failure_is_recorded_in_one_line_and_reraised(run):
    rundir, units = run
    worker.run(rundir.path, units["prepare"].id)

    def broken(record):
        raise RuntimeError("boom\nsecond line of a long traceback")

    with pytest.raises(RuntimeError):
        worker.run(rundir.path, units["s1f1"].id, on_epoch=broken)
    assert rundir.failure(units["s1f1"].id) == "RuntimeError: boom"
    assert not rundir.store.is_done(units["s1f1"].id, "train")
    # a later success clears the record
    assert worker.run(rundir.path, units["s1f1"].id) == "done"
    assert rundir.failure(units["s1f1"].id) is None


@pytest.mark.parametrize("interruption", [SystemExit(0), KeyboardInterrupt()])
def test_an_interruption_is_not_a_failure(run, interruption):
    rundir, units = run
    worker.run(rundir.path, units["prepare"].id)

    def interrupted(record):
        raise interruption

    with pytest.raises(type(interruption)):
        worker.run(rundir.path, units["s1f1"].id, on_epoch=interrupted)
    assert rundir.failure(units["s1f1"].id) is None
    assert not rundir.store.is_done(units["s1f1"].id, "train")


def test_a_spec_the_worker_cannot_read_is_a_recorded_failure(run, capsys):
    rundir, units = run
    prepare = units["prepare"]
    body = json.loads((rundir.unit_dir(prepare.id) / "spec.json").read_text())
    body["spec"]["colour"] = "blue"
    (rundir.unit_dir(prepare.id) / "spec.json").write_text(json.dumps(body))
    assert worker.main([str(rundir.path), prepare.id]) == 1
    assert capsys.readouterr().err.strip() == "error: prepare spec: unknown key 'colour'"
    assert rundir.failure(prepare.id) == "prepare spec: unknown key 'colour'"
    assert worker.main([str(rundir.path)]) == 2


def test_scheduler_info_reads_the_schedulers_environment(monkeypatch):
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "FER_SCHEDULER"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("FER_JOB_ID", raising=False)
    local = worker.scheduler_info()
    assert local["scheduler"] == "local" and local["job_id"].isdigit()
    monkeypatch.setenv("SLURM_JOB_ID", "912")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert worker.scheduler_info() == {"scheduler": "slurm", "job_id": "912", "requeues": 2}
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "900")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "12")
    assert worker.scheduler_info()["job_id"] == "900_12"  # as the slurm backend records it
    # a local launch inside an allocation: its workers inherit the allocation's SLURM_JOB_ID,
    # which is not the job that runs them
    monkeypatch.setenv("FER_SCHEDULER", "local")
    monkeypatch.setenv("FER_JOB_ID", "4242")
    assert worker.scheduler_info() == {"scheduler": "local", "job_id": "4242", "requeues": 0}


def test_death_reason_says_how_a_worker_died(tmp_path):
    log = tmp_path / "unit.log"
    killed = worker.death_reason(-signal.SIGKILL, log)
    assert "SIGKILL (out of memory, or killed by hand)" in killed and "resumes" in killed
    assert "SIGTERM (stopped)" in worker.death_reason(-signal.SIGTERM, log)
    assert str(log) in worker.death_reason(3, log) and "status 3" in worker.death_reason(3, log)


WILD_GRID = """
name: wild-prepare
selection: inner
datasets:
  affect:
    kind: affectnet
    synthetic: true
    scale: 0.002
    crop_size: 32{extra}
backbones: {{tiny: {{}}}}
experiments: [{{backbones: [tiny], strategies: [ce]}}]
train: {{epochs: 1}}
"""


def test_a_fixed_split_twin_is_generated_indexed_and_cropped_by_its_box(tmp_path):
    from fer_core.data.index import DatasetIndex

    grid = tmp_path / "grid.yaml"
    grid.write_text(WILD_GRID.format(extra=""))
    rundir, units = prepare_run(grid, tmp_path / "run")
    prepare = units["prepare"]
    assert prepare.spec["options"] == {"classes": "8"} and prepare.spec["scale"] == 0.002
    assert worker.run(rundir.path, prepare.id) == "done"
    table = rundir.store.read("prepare")
    assert table is not None
    row = table.to_pylist()[0]
    assert (row["kind"], row["detector"], row["synthetic"]) == ("affectnet", "box", True)
    assert json.loads(row["skipped"]) == {"non-face": 166, "none": 67, "uncertain": 24}
    index = DatasetIndex.read(prepare.spec["out_dir"] + "/index.parquet")
    assert row["images"] == len(index) and {r.split for r in index.records} == {"train", "test"}
    assert row["detected"] == len(index)  # every crop is a given box
    # the kind's options are part of the data unit's identity
    grid.write_text(WILD_GRID.format(extra="\n    classes: 7"))
    _, seven = prepare_run(grid, tmp_path / "run7")
    assert seven["prepare"].id != prepare.id


def test_an_attempt_removes_the_temp_files_a_killed_attempt_left(tmp_path):
    """A worker killed between an atomic write's temp file and its rename (live.json, a
    checkpoint) leaves `.tmp-*` behind; the next attempt of the unit removes them before it
    starts (one attempt runs at a time), and keeps every finished file."""
    from tests.helpers import prepare_run, small_grid, temp_files, tiny_ckplus

    grid = tmp_path / "grid.yaml"
    grid.write_text(small_grid(root=tiny_ckplus(tmp_path / "ck", subjects=10), epochs=1))
    rundir, units = prepare_run(grid, tmp_path / "run")
    unit = units["prepare"]
    folder, work = rundir.unit_dir(unit.id), rundir.work_dir(unit.id)
    work.mkdir(parents=True, exist_ok=True)
    left = [folder / ".tmp-live.json.abc123", work / ".tmp-last.pt.xyz"]
    for path in left:
        path.write_text("half")
    (folder / "keep.txt").write_text("whole")
    assert worker.run(rundir.path, unit.id) == "done"
    assert not temp_files(folder) and (folder / "keep.txt").read_text() == "whole"
