"""The Ray backend on a real local Ray (2 CPUs): waves, rows, resume, failures, connect errors.

`test_grid_*` train a one-fold grid for real through `launch --cluster ray` (the CLI, with a
local Ray of its own). The failure and cancel tests run real units too, broken through their
inputs (a data dir that is not there, a unit killed whenever it runs, units long enough to be
cancelled); they share the module's local Ray (`local_ray`) and run while the grid trains in
the background.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fer_core.errors import FerError
from orchestrator.backends.ray.backend import LauncherRecord, RayBackend, wave_numbers
from orchestrator.backends.ray.cluster import probe_address, render_ray_sbatch, resolve_local_head
from orchestrator.plan.dag import expand
from orchestrator.plan.grid import load_grid
from orchestrator.plan.profiles import RayProfile, SlurmProfile
from orchestrator.plan.unit import Unit
from orchestrator.run import worker
from orchestrator.run.launch import launch
from orchestrator.run.rundir import RunDir
from orchestrator.run.states import State
from orchestrator.run.status import status_rows
from tests.helpers import Background, assert_grid_done_once, ray_running, small_grid, wait_until

pytestmark = pytest.mark.usefixtures("ray_left_as_found")

# Stage 1 twice and stage 2 once per fold: three waves, two trials at once in the second.
GRID = small_grid(
    name="raysmall", folds="[1, 2]", strategies='[ce, "ce>focal", focal]', image_size=(64, 48)
)
TRAINED_GRID = GRID.replace("folds: [1, 2]", "folds: [1]")  # the one trained for real
EPOCHS = 2


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("raygrid") / "grid.yaml"
    path.write_text(GRID)
    return path


# --- no Ray needed -------------------------------------------------------------------------


def test_waves_follow_the_dag(grid, tmp_path):
    units = expand(load_grid(str(grid)), tmp_path)
    waves = wave_numbers(units)
    by_wave = {
        k: sorted(u.kind + str(u.stage) for u in units if waves[u.id] == k) for k in (1, 2, 3)
    }
    assert by_wave == {1: ["prepare0"], 2: ["train1"] * 4, 3: ["train2"] * 2}


def test_the_launcher_record_reports_its_units_only_while_it_lives(tmp_path):
    rundir = RunDir(tmp_path)
    backend = RayBackend(RayProfile())
    assert backend.states(rundir) == {} and backend.cancel(rundir) == []
    record = LauncherRecord(rundir)
    record.open(["a", "b"])
    record.set("a", State.RUNNING)
    assert backend.states(rundir) == {"a": "running", "b": "pending"}
    record.close()
    assert backend.states(rundir) == {}
    body = json.loads(record.path.read_text())
    record.path.write_text(json.dumps({**body, "pid": 1, "active": {"a": "running"}}))
    assert backend.states(rundir) == {}  # pid 1 is alive, but it is not the launcher


def test_an_unreachable_address_fails_fast_naming_it(grid, cluster_file, tmp_path):
    assert not ray_running()  # else launch would reuse that Ray and never try the address
    started = time.monotonic()
    with pytest.raises(FerError, match=r"127\.0\.0\.1:1"):
        launch(str(grid), cluster="dead", cluster_file=cluster_file, run_dir=tmp_path / "run")
    # Gave up at its connect timeout (5 s) instead of hanging; the margin absorbs a loaded box.
    assert time.monotonic() - started < 5 + 25


def test_a_silent_address_times_out_within_connect_timeout(tmp_path):
    import socket

    server = socket.socket()  # accepts TCP but speaks no Ray
    server.bind(("127.0.0.1", 0))
    server.listen()
    address = f"127.0.0.1:{server.getsockname()[1]}"
    started = time.monotonic()
    try:
        with pytest.raises(FerError, match="no Ray cluster answered"):
            probe_address(address, timeout_s=3)
    finally:
        server.close()
    assert time.monotonic() - started < 3 + 17  # the timeout, not a hang (margin: load)


def test_a_bad_address_is_refused_by_name():
    with pytest.raises(FerError, match="HOST:PORT"):
        probe_address("headnode", timeout_s=1)


def test_settings_take_the_profile_with_defaults():
    settings = RayProfile(num_cpus=2, cpus_per_trial=1, gpus_per_trial=0.25)
    assert settings.resources_per_trial == {"cpu": 1, "gpu": 0.25}
    assert settings.address is None and settings.max_failures == 2
    assert resolve_local_head("10.0.0.5:6379") == ("10.0.0.5:6379", False)


def test_the_slurm_sbatch_starts_a_head_then_workers_then_runs_the_command():
    text = render_ray_sbatch(
        "fer-ray-paper",
        "/shared/runs/paper",
        ["tune", "--grid", "paper.yaml", "--data", "ckplus=/my data"],
        SlurmProfile(
            partition="gpu", cpus_per_job=16, gpus_per_job=4, setup=("module load cuda/12.4",)
        ),
        RayProfile(gpus_per_trial=0.5),
        nodes=3,
    )
    assert text.startswith("#!/bin/bash\n")
    assert "#SBATCH --nodes=3" in text and "#SBATCH --gpus-per-node=4" in text
    assert "#SBATCH --partition=gpu" in text and "module load cuda/12.4" in text
    head = text.index("--head")
    assert head < text.index('--address="$head_ip:$port"') < text.index("orchestrator tune")
    assert "gpus_per_trial: 0.5" in text and "--cluster ray" in text
    assert "--data 'ckplus=/my data'" in text  # each argument one shell word
    with pytest.raises(FerError):
        render_ray_sbatch("fer-ray-paper", "/x", ["tune"], SlurmProfile(), RayProfile(), nodes=0)


# --- a real local Ray, real units broken through their inputs -------------------------------


@pytest.fixture(scope="module")
def prepared(grid, tmp_path_factory) -> Path:
    """A run dir of GRID whose data unit is done (run in this process, no Ray): each test
    copies its data and prepare rows, as a re-launch would find them."""
    run = tmp_path_factory.mktemp("rayprepared") / "run"
    rundir = RunDir(run)
    rundir.claim("raysmall", grid)
    units = expand(load_grid(str(grid)), run)
    rundir.write_dag(units)
    (prepare,) = [u for u in units if u.kind == "prepare"]
    assert worker.run(run, prepare.id) == "done"
    return run


def _run_dir(grid: Path, prepared: Path, path: Path) -> tuple[RunDir, dict[str, Unit]]:
    """A run dir of GRID with the data prepared; its units by name."""
    shutil.copytree(prepared / "data", path / "data")
    shutil.copytree(prepared / "store" / "prepare", path / "store" / "prepare")
    rundir = RunDir(path)
    rundir.claim("raysmall", grid)
    units = expand(load_grid(str(grid)), rundir.path)
    rundir.write_dag(units)
    return rundir, {u.name: u for u in units}


def _edit_spec(rundir: RunDir, unit: Unit, **values: object) -> None:
    """Change what the worker will run for `unit` (its units/<id>/spec.json)."""
    path = rundir.unit_dir(unit.id) / "spec.json"
    body = json.loads(path.read_text())
    body["spec"].update(values)
    path.write_text(json.dumps(body))


def _long(rundir: RunDir, unit: Unit) -> None:
    """Make `unit` train for minutes: it is still running whenever a test looks."""
    config = rundir.read_spec(unit.id)["spec"]["config"]
    _edit_spec(rundir, unit, config={**config, "epochs": 500, "lr_step_epoch": 499})


def unit_processes(rundir: RunDir, unit: Unit) -> list[int]:
    """The processes running `unit`: those whose stdout is its ray.log."""
    log = str(rundir.unit_log(unit.id, "ray"))
    found = []
    for fd in Path("/proc").glob("[0-9]*/fd/1"):
        try:
            if os.readlink(fd) == log:
                found.append(int(fd.parent.parent.name))
        except OSError:
            continue
    return found


class Killer(threading.Thread):
    """SIGKILLs every process that runs `unit` (as the OOM killer would), until stopped."""

    def __init__(self, rundir: RunDir, unit: Unit):
        super().__init__(daemon=True)
        self.rundir, self.unit = rundir, unit
        self.killed: set[int] = set()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for pid in unit_processes(self.rundir, self.unit):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self.killed.add(pid)
            time.sleep(0.05)


# max_failures 1: a trial that dies every time is retried once, then failed; the default (2)
# would show the same for one more attempt.
PROFILE = RayProfile(cpus_per_trial=1, gpus_per_trial=0, max_failures=1)


@pytest.mark.ray
def test_failures_block_dependants_and_a_dying_unit_fails_after_its_retries(
    grid, prepared, grid_launch, local_ray, tmp_path
):
    rundir, units = _run_dir(grid, prepared, tmp_path / "run")
    broken, dying = units["ckplus/f01/tiny/ce"], units["ckplus/f02/tiny/focal"]
    _edit_spec(rundir, broken, data_dir=str(tmp_path / "gone"))  # a data dir that is not there
    _long(rundir, dying)
    killer = Killer(rundir, dying)
    killer.start()
    try:
        RayBackend(PROFILE).submit(rundir, [u for u in units.values() if u.kind == "train"])
    finally:
        killer.done.set()
        killer.join()
    states = {r["name"]: r for r in status_rows(rundir, RayBackend(PROFILE))}
    assert states["ckplus/f01/tiny/ce"]["state"] == State.FAILED
    assert str(tmp_path / "gone") in states["ckplus/f01/tiny/ce"]["detail"]
    assert states["ckplus/f01/tiny/ce>focal"]["state"] == State.BLOCKED
    assert states["ckplus/f02/tiny/ce"]["state"] == State.DONE
    assert states["ckplus/f02/tiny/ce>focal"]["state"] == State.DONE
    assert states["ckplus/f02/tiny/focal"]["state"] == State.FAILED  # died every time
    assert "ray trial failed" in states["ckplus/f02/tiny/focal"]["detail"]
    # A unit that failed is not run again (one error line in its log); one that died is,
    # until its retries are spent.
    log = (rundir.unit_log(broken.id, "ray")).read_text()
    assert log.count("error: ") == 1, log
    assert len(killer.killed) == 1 + PROFILE.max_failures
    submitted = set(rundir.submissions())
    assert units["ckplus/f01/tiny/ce>focal"].id not in submitted  # blocked: never submitted
    assert units["ckplus/prepare"].id not in submitted  # done before: never submitted
    assert RayBackend(PROFILE).states(rundir) == {}


@pytest.mark.ray
def test_cancel_stops_a_running_launch_and_a_relaunch_resumes(
    grid, prepared, grid_launch, local_ray, tmp_path
):
    rundir, units = _run_dir(grid, prepared, tmp_path / "run")
    slow = [units["ckplus/f01/tiny/ce"], units["ckplus/f02/tiny/ce"]]
    for unit in slow:
        _long(rundir, unit)
    todo = [u for u in units.values() if u.kind == "train"]
    stage2 = {u.id for u in todo if u.stage == 2}
    backend = RayBackend(PROFILE)
    seen: dict[str, object] = {}

    def cancel_when_running() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            states = backend.states(rundir)
            if all(unit_processes(rundir, u) for u in slow):
                seen["states"] = states
                seen["cancelled"] = backend.cancel(rundir)
                return
            time.sleep(0.2)

    canceller = threading.Thread(target=cancel_when_running)
    canceller.start()
    with pytest.raises(FerError, match="cancelled"):
        backend.submit(rundir, todo)
    canceller.join()
    # Stopped, not waited out: the slow units never finished, and their processes end with
    # their trials (they were forked from a server that outlives them).
    assert not any(rundir.store.is_done(u.id, "train") for u in slow)
    for unit in slow:
        wait_until(lambda u=unit: not unit_processes(rundir, u), 60, f"{unit.name} to stop")
    assert seen["states"][slow[0].id] == State.RUNNING
    assert stage2 <= set(seen["states"])  # waiting for their wave: pending
    assert stage2 <= set(seen["cancelled"])
    assert backend.states(rundir) == {}
    assert not any(rundir.store.is_done(u, "train") for u in stage2)
    assert not any(rundir.failure(u.id) for u in units.values()), "cancelled: not failures"

    rundir.write_dag(list(units.values()))  # the specs as launch writes them: short again
    todo = [u for u in todo if not rundir.store.is_done(u.id, u.kind)]
    assert stage2 <= {u.id for u in todo}
    backend.submit(rundir, todo)
    runs = rundir.store.read("runs").column("unit_id").to_pylist()
    assert sorted(runs) == sorted(u.id for u in units.values() if u.kind == "train")


# --- a real local Ray, real training --------------------------------------------------------


@pytest.fixture(scope="module")
def grid_launch(cluster_file, tmp_path_factory) -> Iterator[tuple[Background, Path, Path]]:
    """(the launcher, grid, run dir) of the one-fold grid launched on Ray by the CLI, as a user
    does (with a local Ray of its own), in the background: the failure and cancel tests run
    meanwhile (they ask for it), as the 2 cores do both faster than one after the other."""
    tmp = tmp_path_factory.mktemp("rayrun")
    grid, run = tmp / "grid.yaml", tmp / "run"
    grid.write_text(TRAINED_GRID)
    args = ("launch", "--grid", grid, "--cluster", "ray", "--cluster-file", cluster_file)
    launcher = Background(*args, "--run-dir", run, cwd=tmp, name="launch")
    try:
        yield launcher, grid, run
    finally:
        launcher.kill_group()  # a no-op once it has ended


@pytest.fixture(scope="module")
def finished_run(grid_launch) -> tuple[Path, RunDir]:
    launcher, grid, run = grid_launch
    assert launcher.wait(600) == 0, launcher.output()
    return grid, RunDir(run)


@pytest.mark.ray
@pytest.mark.slow
def test_grid_every_unit_trains_once_with_the_right_rows(finished_run):
    _, rundir = finished_run
    units = rundir.read_dag()
    assert len([u for u in units if u.kind == "train"]) == 3  # ce, focal, ce>focal stage 2
    runs = assert_grid_done_once(rundir, EPOCHS).values()
    assert {r["scheduler"] for r in runs} == {"ray"}
    submissions = rundir.submissions()
    assert {s["attempts"] for s in submissions.values()} == {1}
    assert {s["backend"] for s in submissions.values()} == {"ray"}
    assert len(submissions) == len(units)


@pytest.mark.ray
@pytest.mark.slow
def test_grid_stage_2_starts_from_its_stage_1_checkpoint(finished_run):
    _, rundir = finished_run
    runs = {r["unit_id"]: r for r in rundir.store.read("runs").to_pylist()}
    (row,) = [r for r in runs.values() if r["stage"] == 2]
    parent = runs[row["parent_id"]]
    assert (parent["stage"], parent["strategy"], parent["fold"]) == (1, "ce", row["fold"])
    assert row["parent_weights_sha"] == row["start_weights_sha"]


@pytest.mark.ray
@pytest.mark.slow
def test_grid_relaunch_is_a_no_op(finished_run, cluster_file):
    grid, rundir = finished_run
    before = {p: p.stat().st_mtime_ns for p in rundir.store.files("runs")}
    out = io.StringIO()
    launch(str(grid), cluster="ray", cluster_file=cluster_file, run_dir=rundir.path, out=out)
    assert "nothing to submit" in out.getvalue()
    assert {p: p.stat().st_mtime_ns for p in rundir.store.files("runs")} == before
    assert RayBackend(RayProfile()).states(rundir) == {}
