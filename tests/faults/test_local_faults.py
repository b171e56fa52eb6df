"""Faults on the local backend, through the real CLI (`python -m orchestrator launch` as a
subprocess): a worker SIGKILLed mid-epoch, the launcher SIGKILLed mid-grid, two launches on
one run dir at once, `cancel` and Ctrl-C mid-launch, a launch whose stdout reader went away.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from fer_core.spec import UnitSpec
from fer_core.unit import run_unit
from orchestrator.backends.local import LocalBackend
from orchestrator.plan.profiles import LocalProfile
from orchestrator.run.rundir import RunDir
from orchestrator.run.status import status_rows
from tests.helpers import (
    Background,
    alive,
    assert_grid_done_once,
    cli,
    cli_env,
    epochs_done,
    launched_roles,
    temp_files,
    wait_mid_training,
    wait_until,
)

pytestmark = pytest.mark.slow


def _launch_args(grid, run) -> list[str]:
    return ["launch", "--grid", grid, "--run-dir", run, "--jobs", "1"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_relaunch_resumes_from_the_last_epoch(study, tmp_path):
    """Fault: the training process of a unit gets SIGKILL in the middle of an epoch.
    Expect: the launch names the death; a re-launch resumes from the last epoch checkpoint
    (at most the interrupted epoch is redone), one row set lands, equal to a clean run's."""
    epochs = 6
    grid, run = study(strategies="[ce]", epochs=epochs)
    first = Background(*_launch_args(grid, run), cwd=tmp_path, name="first")
    rundir = RunDir(run)
    try:
        unit = launched_roles(run, first)["s1f1"]
        wait_mid_training(rundir, unit.id, 2, epochs - 1, 240, explain=first.output)
        pid = int(rundir.submissions()[unit.id]["job_id"])
        os.kill(pid, signal.SIGKILL)
        done_at_kill = epochs_done(rundir, unit.id)
        code = first.wait(600)  # the other units finish first; a bound, not a timing
    finally:
        first.kill_group()
    assert code == 1, first.output()
    reason = rundir.failure(unit.id)
    assert reason and "killed by SIGKILL" in reason and "re-launch resumes" in reason
    assert "killed by SIGKILL" in first.output()  # the launch said so too
    rows = {r["unit_id"]: r for r in status_rows(rundir, LocalBackend(LocalProfile()))}
    assert rows[unit.id]["state"] == "failed" and "SIGKILL" in rows[unit.id]["detail"]
    assert rundir.store.read("runs") is None  # nothing half-done in the store

    again = cli(*_launch_args(grid, run), cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert rundir.submissions()[unit.id]["attempts"] == 2
    run_row = assert_grid_done_once(rundir, epochs)[unit.id]
    redone = done_at_kill + 1 - run_row["resumed_from_epoch"]  # the killed epoch counts
    assert run_row["resumed_from_epoch"] >= done_at_kill and redone <= 1, run_row
    assert rundir.failure(unit.id) is None
    assert not temp_files(run)

    # Deterministic on the CPU: equal to one uninterrupted run of the same unit.
    torch.set_num_threads(1)
    clean = run_unit(UnitSpec.from_dict(rundir.read_spec(unit.id)["spec"]), tmp_path / "clean")
    assert clean["run"]["test_accuracy"] == run_row["test_accuracy"]
    assert clean["run"]["best_epoch"] == run_row["best_epoch"]
    resumed = rundir.store.read("epochs", {unit.id}).to_pylist()
    for mine, theirs in zip(resumed, clean["epochs"], strict=True):
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)
        assert mine["selection_accuracy"] == theirs["selection_accuracy"]
    predicted = rundir.store.read("predictions", {unit.id}).column("predicted").to_pylist()
    assert predicted == [p["predicted"] for p in clean["predictions"]]


@pytest.mark.slow
def test_launcher_sigkilled_mid_grid_then_relaunch_neither_duplicates_nor_jumps_ahead(
    study, tmp_path
):
    """Fault: the launcher itself gets SIGKILL while stage 1 trains (its worker lives on).
    Expect: a re-launch leaves the live worker alone (no second worker on the same unit),
    starts stage 2 only once stage 1 is done, and the grid completes once."""
    epochs = 4
    grid, run = study(strategies='["ce>focal"]', epochs=epochs)
    first = Background(*_launch_args(grid, run), cwd=tmp_path, name="first")
    rundir = RunDir(run)
    try:
        unit = launched_roles(run, first)
        wait_mid_training(rundir, unit["s1f1"].id, 1, epochs - 1, 240, explain=first.output)
        os.kill(first.pid, signal.SIGKILL)  # the launcher only: its worker is orphaned
        first.process.wait(30)
        worker = int(rundir.submissions()[unit["s1f1"].id]["job_id"])
        assert alive(worker), "the stage-1 worker should outlive its launcher"
        # Hold the orphan still until the re-launch has decided on stage 2 (it says that it
        # waits), so that stage 1 is surely unfinished then: a re-launch that jumped ahead
        # would start stage 2 instead, and never say so.
        os.kill(worker, signal.SIGSTOP)
        try:
            again = Background(*_launch_args(grid, run), cwd=tmp_path, name="again")
            waits = f"{unit['s2f1'].name} waits for a dependency still running"
            wait_until(
                lambda: waits in again.output() or unit["s2f1"].id in rundir.submissions(),
                120,
                "the re-launch to decide on stage 2",
            )
            assert unit["s2f1"].id not in rundir.submissions(), "stage 2 started too early"
        finally:
            os.kill(worker, signal.SIGCONT)
        code = again.wait(300)
    finally:
        first.kill_group()
    assert code == 0, again.output()
    assert "submitting 1 units" in again.output() and "1 active" in again.output()
    records = rundir.submissions()
    assert (
        records[unit["s1f1"].id]["attempts"] == 1
        and int(records[unit["s1f1"].id]["job_id"]) == worker
    )
    assert records[unit["s2f1"].id]["attempts"] == 1
    runs = assert_grid_done_once(rundir, epochs)
    stage1, stage2 = runs[unit["s1f1"].id], runs[unit["s2f1"].id]
    assert stage1["resumed_from_epoch"] == 0  # it was never interrupted
    assert stage2["started_at"] >= stage1["finished_at"]  # not from a half-trained parent
    assert stage2["parent_weights_sha"] == stage2["start_weights_sha"]


@pytest.mark.slow
def test_two_launches_at_once_one_wins_the_other_says_busy(study, tmp_path):
    """Fault: two `launch` commands on the same run dir at the same moment.
    Expect: exactly one runs the grid; the other exits 2 at once saying the run dir is busy
    (naming the holder's pid) and submits nothing; every unit runs once."""
    grid, run = study(strategies="[ce]", epochs=2)
    a = Background(*_launch_args(grid, run), cwd=tmp_path, name="a")
    b = Background(*_launch_args(grid, run), cwd=tmp_path, name="b")
    try:
        codes = {"a": a.wait(300), "b": b.wait(300)}
    finally:
        a.kill_group()
        b.kill_group()
    loser, winner = (b, a) if codes["b"] == 2 else (a, b)
    assert sorted(codes.values()) == [0, 2], a.output() + b.output()
    lines = loser.stderr().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), loser.stderr()
    assert "busy" in lines[0] and f"pid {winner.pid}" in lines[0]
    assert "submitting" not in loser.output()
    rundir = RunDir(run)
    assert {r["attempts"] for r in rundir.submissions().values()} == {1}
    assert_grid_done_once(rundir, 2)
    assert json.loads((run / "run.json").read_text())["grid"] == "faults"


STOP_EPOCHS = 6


def _stopped_mid_training(study, tmp_path, stop) -> tuple[RunDir, Background, str]:
    """A launch of two independent trainings, one at a time, stopped by `stop(launcher,
    rundir)` while the first trains; (run dir, launcher, that unit's id) once it exited."""
    epochs = STOP_EPOCHS
    grid, run = study(strategies="[ce, focal]", epochs=epochs)
    launcher = Background(*_launch_args(grid, run), cwd=tmp_path, name="launch")
    rundir = RunDir(run)
    try:
        launched_roles(run, launcher)
        first = wait_until(
            lambda: next((u for u in rundir.submissions() if u in _trainings(rundir)), None),
            120,
            "the first training to start",
            explain=launcher.output,
        )
        wait_mid_training(rundir, first, 1, epochs - 1, 240, explain=launcher.output)
        stop(launcher, rundir)
        launcher.wait(600)  # a bound, not a timing
    finally:
        launcher.kill_group()
    return rundir, launcher, first


def _trainings(rundir: RunDir) -> set[str]:
    return {u.id for u in rundir.read_dag() if u.kind == "train"}


def _assert_stopped_not_failed(rundir: RunDir, launcher: Background, first: str) -> None:
    """The launch stopped its running unit and started no other; nothing reads as failed;
    the stopped unit is to do again, and a re-launch resumes it and completes the grid."""
    assert launcher.process.returncode == 130, launcher.output()
    assert "Traceback" not in launcher.stderr(), launcher.stderr()
    assert set(rundir.submissions()) & _trainings(rundir) == {first}, launcher.output()
    assert not any(rundir.failure(u) for u in _trainings(rundir))
    rows = {r["unit_id"]: r for r in status_rows(rundir, LocalBackend(LocalProfile()))}
    assert {rows[u]["state"] for u in _trainings(rundir)} == {"todo"}, rows
    _relaunch_resumes(rundir, first, tmp_path=rundir.path.parent)


def _relaunch_resumes(rundir: RunDir, first: str, tmp_path) -> None:
    """`launch` again completes the grid, once, the stopped unit from its last epoch."""
    again = cli(*_launch_args(rundir.path.parent / "faults.yaml", rundir.path), cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    runs = assert_grid_done_once(rundir, STOP_EPOCHS)
    assert runs[first]["resumed_from_epoch"] >= 1, runs[first]


def test_cancel_stops_a_local_launch_and_starts_nothing_more(study, tmp_path):
    """Fault: `cancel` while a local launch trains the first of two units (--jobs 1).
    Expect: the launcher stops (it used to start the next unit once its worker was
    killed), exits as interrupted, and nothing is recorded as failed."""

    def cancel(launcher: Background, rundir: RunDir) -> None:
        result = cli("cancel", "--run-dir", rundir.path, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "cancelled 1 units" in result.stdout

    _assert_stopped_not_failed(*_stopped_mid_training(study, tmp_path, cancel))


def test_ctrl_c_stops_a_local_launch_without_recording_failures(study, tmp_path):
    """Fault: Ctrl-C (SIGINT to the terminal's whole process group: launcher, fork server
    and workers) while a unit trains. Expect: everything stops, the launch exits 130, and
    the interrupted unit is not recorded as failed (it used to be: "exited with status 1")."""

    def ctrl_c(launcher: Background, rundir: RunDir) -> None:
        os.killpg(launcher.pid, signal.SIGINT)

    _assert_stopped_not_failed(*_stopped_mid_training(study, tmp_path, ctrl_c))


def test_a_launch_whose_reader_went_away_runs_every_unit(study, tmp_path):
    """Fault: `launch | head`: the launcher's stdout is a pipe whose reader has gone.
    Expect: no traceback, and the launch still runs the grid to the end (it used to die at
    its first line of output, leaving the units undone)."""
    grid, run = study(strategies='["ce>focal"]', epochs=2)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    try:
        result = subprocess.run(
            [sys.executable, "-m", "orchestrator", *_launch_args(grid, run)],
            cwd=tmp_path,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=600,
            env=cli_env(),
        )
    finally:
        os.close(write)
    assert result.returncode == 0 and not result.stderr, result.stderr
    assert_grid_done_once(RunDir(run), 2)


def test_a_worker_stopped_by_hand_is_not_a_failure_and_the_launch_says_what_is_left(
    study, tmp_path
):
    """Fault: one worker gets SIGTERM (by hand, not `cancel`) while the launch goes on.
    Expect: that unit is stopped, not failed (nothing recorded), the other unit runs, and
    the launch ends saying a unit is neither done nor failed, with exit status 1."""

    def sigterm_worker(launcher: Background, rundir: RunDir) -> None:
        first = next(u for u in rundir.submissions() if u in _trainings(rundir))
        os.kill(int(rundir.submissions()[first]["job_id"]), signal.SIGTERM)

    rundir, launcher, first = _stopped_mid_training(study, tmp_path, sigterm_worker)
    assert launcher.process.returncode == 1, launcher.output()
    assert "1 units neither done nor failed" in launcher.stderr(), launcher.output()
    assert f"stopped {rundir.read_spec(first)['name']}" in launcher.output()
    assert rundir.failure(first) is None
    rows = {r["unit_id"]: r for r in status_rows(rundir, LocalBackend(LocalProfile()))}
    assert rows[first]["state"] == "todo"
    assert {rows[u]["state"] for u in _trainings(rundir) - {first}} == {"done"}
    _relaunch_resumes(rundir, first, tmp_path=rundir.path.parent)
