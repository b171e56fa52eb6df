"""The local backend end to end on a small grid: rows, resume, no-op, failure and retry.

`finished_run` is launched once and shared: tests only read it; a test that records,
re-launches or breaks something does so in its own copy (`private_copy`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace

import pytest

from orchestrator.backends.local import LocalBackend
from orchestrator.plan.profiles import LocalProfile, load_profile
from orchestrator.run.launch import launch
from orchestrator.run.processes import process_start
from orchestrator.run.rundir import RunDir
from orchestrator.run.states import State
from orchestrator.run.status import status_rows
from tests.helpers import SMALL_GRID, done_prepare_units, private_copy, tiny_ckplus

GRID = SMALL_GRID.replace("folds: [1]", "folds: [1, 2]").replace(
    'strategies: [ce, "ce>focal"]', 'strategies: [ce, "ce>focal", focal]'
)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("local")
    grid = tmp / "grid.yaml"
    grid.write_text(GRID)
    rundir = launch(str(grid), run_dir=tmp / "run", jobs=2)
    return grid, rundir


def test_every_unit_lands_once_with_the_right_rows(finished_run):
    _, rundir = finished_run
    units = rundir.read_dag()
    train = [u for u in units if u.kind == "train"]
    assert len(train) == 6  # 2 folds x (ce, focal, ce>focal stage 2)
    runs = rundir.store.read("runs").to_pylist()
    assert sorted(r["unit_id"] for r in runs) == sorted(u.id for u in train)
    epochs = rundir.store.read("epochs").to_pylist()
    assert len(epochs) == 6 * 2
    predictions = rundir.store.read("predictions").to_pylist()
    assert len(predictions) == sum(r["n_test"] for r in runs)
    stage2 = [r for r in runs if r["stage"] == 2]
    assert all(r["parent_weights_sha"] == r["start_weights_sha"] for r in stage2)


def test_forked_workers_log_to_their_unit_and_record_a_nameable_process(finished_run, tmp_path):
    """Workers are forked from a pre-loaded server, yet each writes its own log (as the
    command `python -m orchestrator.run.worker` would) and its record names exactly one process:
    the same pid with another start time (a recycled pid) is not that worker."""
    rundir = private_copy(finished_run[1], tmp_path)
    records = rundir.submissions()
    train = [u for u in rundir.read_dag() if u.kind == "train"]
    for unit in train:
        log = (rundir.unit_dir(unit.id) / "local.log").read_text()
        assert log.rstrip().endswith(f"{unit.id}: done"), log[-300:]
        assert records[unit.id]["pid_start"].isdigit()
    backend = LocalBackend(LocalProfile(jobs=1))
    assert backend.states(rundir) == {}  # all exited
    me = {"backend": "local", "job_id": str(os.getpid())}
    rundir.record_submissions({train[0].id: {**me, "pid_start": process_start(os.getpid())}})
    assert backend.states(rundir) == {train[0].id: State.RUNNING}
    rundir.record_submissions({train[0].id: {**me, "pid_start": "1"}})
    assert backend.states(rundir) == {}


def test_relaunching_a_finished_grid_is_a_no_op(finished_run, capsys, tmp_path):
    grid, rundir = finished_run[0], private_copy(finished_run[1], tmp_path)
    before = {p: p.stat().st_mtime_ns for p in rundir.store.files("runs")}
    launch(str(grid), run_dir=rundir.path)
    assert "nothing to submit" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in rundir.store.files("runs")} == before


def test_a_failed_unit_blocks_its_chain_and_a_relaunch_retries_only_that(finished_run, tmp_path):
    rundir = private_copy(finished_run[1], tmp_path)
    changed = tmp_path / "grid.yaml"  # same data unit, new trainings (3 epochs)
    changed.write_text(GRID.replace("epochs: 2", "epochs: 3"))
    faces = next(rundir.path.glob("data/ckplus/*/faces.pt"))
    backup = tmp_path / "faces.pt"
    shutil.copy(faces, backup)
    faces.write_bytes(b"damaged on a shared file system")

    launch(str(changed), run_dir=rundir.path)
    rows = {r["name"]: r for r in status_rows(rundir, LocalBackend(LocalProfile()))}
    assert rows["ckplus/f01/tiny/ce"]["state"] == State.FAILED
    assert "faces.pt" in rows["ckplus/f01/tiny/ce"]["detail"]
    assert rows["ckplus/f01/tiny/ce>focal"]["state"] == State.BLOCKED
    assert rows["ckplus/prepare"]["state"] == State.DONE

    shutil.copy(backup, faces)
    launch(str(changed), run_dir=rundir.path)
    rows = status_rows(rundir, LocalBackend(LocalProfile()))
    assert {r["state"] for r in rows} == {State.DONE}
    attempts = {r["name"]: r["attempts"] for r in rows}
    assert attempts["ckplus/f01/tiny/ce"] == 2  # failed once, retried once
    assert attempts["ckplus/f01/tiny/ce>focal"] == 1  # blocked: never ran, then ran once


def test_launch_jobs_runs_units_with_that_many_at_once(finished_run, tmp_path, monkeypatch):
    """`--jobs 1` on the local profile (jobs: 2): the backend that runs the units holds the
    profile with jobs 1, and nothing else of the profile changed."""
    grid, rundir = finished_run[0], private_copy(finished_run[1], tmp_path)
    leaf = next(u for u in rundir.read_dag() if u.name == "ckplus/f01/tiny/focal")
    rundir.reset_unit(leaf.id)
    profiles = []
    submit = LocalBackend.submit

    def recording_submit(self, *args, **kwargs):
        profiles.append(self.profile)
        return submit(self, *args, **kwargs)

    monkeypatch.setattr(LocalBackend, "submit", recording_submit)
    launch(str(grid), run_dir=rundir.path, jobs=1)
    shipped = load_profile("local")
    assert shipped.jobs != 1  # else this shows nothing
    assert profiles == [replace(shipped, jobs=1)]
    assert rundir.is_done(leaf.id, leaf.kind)
    assert rundir.submissions()[leaf.id]["attempts"] == 2


def test_a_run_dir_of_another_grid_is_refused(finished_run, tmp_path):
    from fer_core.errors import FerError

    rundir = private_copy(finished_run[1], tmp_path)
    other = tmp_path / "other.yaml"
    other.write_text(GRID.replace("name: small", "name: other"))
    with pytest.raises(FerError, match="holds results of grid 'small'"):
        launch(str(other), run_dir=rundir.path)


def test_many_short_units_are_each_recorded_as_what_they_did(tmp_path, capsys):
    """Stress: 60 units whose workers exit 0 within milliseconds, four at a time, so that
    workers start while others end. Each must be reported done with the exit status it had:
    none failed, none blocked, no status but 0. (Workers started and joined from several
    threads read each other's exit status: some came back as 255.)"""
    root = tiny_ckplus(tmp_path / "tree", subjects=2, size=16)
    rundir = RunDir(tmp_path / "run")
    units = done_prepare_units(rundir, root, 60)
    capsys.readouterr()
    LocalBackend(LocalProfile(jobs=4, threads_per_job=1)).submit(rundir, units)
    lines = capsys.readouterr().out.splitlines()
    finished = [line for line in lines if line.startswith("[")]
    wrong = [line for line in finished if " done " not in line or "status" in line]
    assert len(finished) == len(units) and not wrong, "\n".join(wrong)
    assert all(rundir.failure(u.id) is None for u in units)
    assert len(rundir.submissions()) == len(units)


def test_cancel_spares_a_process_that_took_a_killed_launchers_pid(tmp_path):
    """A launcher killed by SIGKILL leaves its pid in launch.lock; `cancel` stops the process
    of that pid only while it holds the lock file open, so a process that now has the pid
    (here: one that is not a launcher at all) is left alone."""
    rundir = RunDir(tmp_path / "run")
    rundir.path.mkdir()
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        (rundir.path / "launch.lock").write_text(f"{bystander.pid}\n")
        assert rundir.launcher() == bystander.pid  # what cancel reads
        assert LocalBackend(LocalProfile()).cancel(rundir) == []
        assert bystander.poll() is None, "cancel signalled a process that is no launcher"
    finally:
        bystander.kill()
        bystander.wait()
