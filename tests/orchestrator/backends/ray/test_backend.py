"""The Ray backend on a real local Ray (2 CPUs): waves, rows, resume, failures, connect errors.

`test_grid_*` train a one-fold grid for real through `launch --cluster ray` (the CLI, with a
local Ray of its own). The failure tests swap `orchestrator.run.worker.run` for a scripted fake (no
training), so they can make a unit raise, or kill its trial process once, cheaply; they share
the module's local Ray (`local_ray`) and run while the grid trains in the background.
"""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fer_core.errors import FerError
from orchestrator.backends.ray.backend import LauncherRecord, RayBackend, wave_numbers
from orchestrator.backends.ray.cluster import (
    RaySettings,
    probe_address,
    render_ray_sbatch,
    resolve_local_head,
)
from orchestrator.plan.dag import expand
from orchestrator.plan.grid import load_grid
from orchestrator.run.launch import launch
from orchestrator.run.rundir import RunDir
from orchestrator.run.states import State
from orchestrator.run.status import status_rows
from tests.helpers import Background, assert_grid_done_once, ray_running, small_grid

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
    backend = RayBackend({"backend": "ray"})
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
    settings = RaySettings.from_profile(
        {"address": None, "num_cpus": 2, "cpus_per_trial": 1, "gpus_per_trial": 0.25}
    )
    assert settings.resources_per_trial == {"cpu": 1, "gpu": 0.25}
    assert settings.address is None and settings.max_failures == 2
    assert resolve_local_head("10.0.0.5:6379") == ("10.0.0.5:6379", False)


def test_the_slurm_sbatch_starts_a_head_then_workers_then_runs_the_command():
    text = render_ray_sbatch(
        "fer-ray-paper",
        "/shared/runs/paper",
        ["tune", "--grid", "paper.yaml", "--data", "ckplus=/my data"],
        nodes=3,
        cpus_per_node=16,
        gpus_per_node=4,
        gpus_per_trial=0.5,
        partition="gpu",
        setup=["module load cuda/12.4"],
    )
    assert text.startswith("#!/bin/bash\n")
    assert "#SBATCH --nodes=3" in text and "#SBATCH --gpus-per-node=4" in text
    assert "#SBATCH --partition=gpu" in text and "module load cuda/12.4" in text
    head = text.index("--head")
    assert head < text.index('--address="$head_ip:$port"') < text.index("orchestrator tune")
    assert "gpus_per_trial: 0.5" in text and "--cluster ray" in text
    assert "--data 'ckplus=/my data'" in text  # each argument one shell word
    with pytest.raises(FerError):
        render_ray_sbatch("fer-ray-paper", "/x", ["tune"], nodes=0)


# --- a real local Ray, a scripted fake worker ---------------------------------------------------

FAKE_WORKER = '''
import hashlib, json, os, time
from pathlib import Path
from orchestrator.run.rundir import RunDir

def fake_run(run_dir, unit_id):
    """orchestrator.run.worker.run without training; RUN_DIR/script.json says what goes wrong."""
    rundir = RunDir(Path(run_dir))
    body = rundir.read_spec(unit_id)
    if rundir.store.is_done(unit_id, body["kind"]):
        return "already done"
    with open(rundir.path / "invocations.txt", "a") as log:
        log.write(unit_id + "\\n")
    script = json.loads((rundir.path / "script.json").read_text())
    name = body["name"]
    time.sleep(script.get("sleep", {}).get(name, 0))
    if name in script.get("die_always", []):
        os._exit(9)
    if name in script.get("die_once", []):
        marker = rundir.unit_dir(unit_id) / "died"
        if not marker.exists():
            marker.write_text("x")
            os._exit(9)  # the trial's process dies, as if OOM-killed
    if name in script.get("raise", []):
        rundir.mark_failed(unit_id, "FerError: scripted failure")
        raise ValueError("scripted failure")
    if body["kind"] == "prepare":
        rows = [{"unit_id": unit_id, "images": 10, "detected": 10, "fallback": 0}]
        rundir.store.write("prepare", unit_id, rows)
    else:  # what a training leaves: its best.pt with the digest recorded (lineage), its rows
        work = rundir.work_dir(unit_id)
        work.mkdir(parents=True, exist_ok=True)
        weights = unit_id.encode()
        (work / "best.pt").write_bytes(weights)
        digest = hashlib.sha256(weights).hexdigest()
        (work / "checkpoints.json").write_text(json.dumps({"best.pt": digest}))
        run = {"unit_id": unit_id, "test_accuracy": 0.5, "best_epoch": 1}
        rundir.store.write_unit(unit_id, {"run": run, "predictions": [run], "epochs": [run]})
    rundir.clear_failed(unit_id)
    return "done"
'''


@pytest.fixture(scope="module")
def fake_worker(grid_launch, tmp_path_factory):
    """The fake worker as an importable module, pickled by value into Ray's workers (while
    the real grid trains: see grid_launch)."""
    folder = tmp_path_factory.mktemp("fakeworker")
    (folder / "ray_fake_worker.py").write_text(FAKE_WORKER)
    sys.path.insert(0, str(folder))
    try:
        import ray_fake_worker
        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(ray_fake_worker)
        yield folder, ray_fake_worker.fake_run
    finally:
        sys.path.remove(str(folder))


def _fake_rundir(
    grid: Path, path: Path, script: dict, prepared: bool = False
) -> tuple[RunDir, list]:
    rundir = RunDir(path)
    rundir.claim("raysmall", grid)
    units = expand(load_grid(str(grid)), rundir.path)
    rundir.write_dag(units)
    (rundir.path / "script.json").write_text(json.dumps(script))
    if prepared:
        prepare = next(u for u in units if u.kind == "prepare")
        rundir.store.write("prepare", prepare.id, [{"unit_id": prepare.id, "images": 10}])
    return rundir, units


def _counts(rundir: RunDir, units: list) -> dict[str, int]:
    invocations = (rundir.path / "invocations.txt").read_text().split()
    return {u.name: invocations.count(u.id) for u in units}


# reuse_actors: one trial process per CPU per wave, not one per unit (~3.5 s each here);
# max_failures 1: a trial that dies every time is retried once, then failed; the default (2)
# would show the same for one more trial process start.
PROFILE = {
    "backend": "ray",
    "cpus_per_trial": 1,
    "gpus_per_trial": 0,
    "reuse_actors": True,
    "max_failures": 1,
}


@pytest.mark.ray
def test_failures_block_dependants_and_a_dead_trial_is_retried(
    grid, fake_worker, local_ray, tmp_path
):
    _, fake_run = fake_worker
    rundir, units = _fake_rundir(
        grid,
        tmp_path / "run",
        {
            "raise": ["ckplus/f01/tiny/ce"],
            "die_once": ["ckplus/f02/tiny/ce"],
            "die_always": ["ckplus/f02/tiny/focal"],
        },
        prepared=True,
    )
    RayBackend(PROFILE, runner=fake_run).submit(rundir, [u for u in units if u.kind == "train"])
    states = {r["name"]: r for r in status_rows(rundir, RayBackend(PROFILE))}
    assert states["ckplus/f01/tiny/ce"]["state"] == State.FAILED
    assert "scripted failure" in states["ckplus/f01/tiny/ce"]["detail"]
    assert states["ckplus/f01/tiny/ce>focal"]["state"] == State.BLOCKED
    assert states["ckplus/f02/tiny/ce"]["state"] == State.DONE  # died once, retried
    assert states["ckplus/f02/tiny/ce>focal"]["state"] == State.DONE
    assert states["ckplus/f02/tiny/focal"]["state"] == State.FAILED  # died every time
    assert "ray trial failed" in states["ckplus/f02/tiny/focal"]["detail"]
    counts = _counts(rundir, units)
    assert counts["ckplus/f01/tiny/ce"] == 1  # a unit that raised is not run again
    assert counts["ckplus/f02/tiny/ce"] == 2  # a trial whose process died is
    assert counts["ckplus/f01/tiny/ce>focal"] == 0  # blocked: never submitted
    assert counts["ckplus/f02/tiny/focal"] == 1 + PROFILE["max_failures"]  # then it failed
    assert counts["ckplus/prepare"] == 0  # done before: never submitted
    assert sum(counts.values()) == 6 - 1 + 1 + PROFILE["max_failures"]
    by_id = {u.id: u.name for u in units}
    assert "ckplus/f01/tiny/ce>focal" not in {by_id[u] for u in rundir.submissions()}
    assert RayBackend(PROFILE).states(rundir) == {}


@pytest.mark.ray
def test_cancel_stops_a_running_launch_and_a_relaunch_resumes(
    grid, fake_worker, local_ray, tmp_path
):
    _, fake_run = fake_worker
    slow = {"ckplus/f01/tiny/ce": 120, "ckplus/f02/tiny/ce": 120}
    rundir, units = _fake_rundir(grid, tmp_path / "run", {"sleep": slow}, prepared=True)
    todo = [u for u in units if u.kind == "train"]
    stage2 = {u.id for u in todo if u.stage == 2}
    backend = RayBackend(PROFILE)
    seen: dict[str, object] = {}

    def cancel_when_running() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            states = backend.states(rundir)
            if State.RUNNING in states.values():
                seen["states"] = states
                seen["cancelled"] = backend.cancel(rundir)
                return
            time.sleep(0.2)

    canceller = threading.Thread(target=cancel_when_running)
    canceller.start()
    with pytest.raises(FerError, match="cancelled"):
        RayBackend(PROFILE, runner=fake_run).submit(rundir, todo)
    canceller.join()
    # Stopped, not waited out: the slow units (120 s each) never finished.
    slow_ids = {u.id for u in units if u.name in slow}
    assert not any(rundir.store.is_done(u, "train") for u in slow_ids)
    assert stage2 <= set(seen["states"])  # waiting for their wave: pending
    assert stage2 <= set(seen["cancelled"])
    assert backend.states(rundir) == {}
    assert not any(rundir.store.is_done(u, "train") for u in stage2)
    assert not any(rundir.failure(u.id) for u in units), "cancelled units are not failures"

    (rundir.path / "script.json").write_text("{}")
    todo = [u for u in units if not rundir.store.is_done(u.id, u.kind)]
    assert stage2 <= {u.id for u in todo}
    RayBackend(PROFILE, runner=fake_run).submit(rundir, todo)
    assert all(rundir.store.is_done(u.id, u.kind) for u in units)
    assert all(n <= 2 for n in _counts(rundir, units).values())


# --- a real local Ray, real training --------------------------------------------------------


@pytest.fixture(scope="module")
def grid_launch(cluster_file, tmp_path_factory) -> Iterator[tuple[Background, Path, Path]]:
    """(the launcher, grid, run dir) of the one-fold grid launched on Ray by the CLI, as a user
    does (with a local Ray of its own), in the background: the fake-worker tests run meanwhile
    (`fake_worker` asks for it), as the 2 cores do both faster than one after the other."""
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
    assert RayBackend({"backend": "ray"}).states(rundir) == {}
