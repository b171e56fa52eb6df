"""Units of several ranks on Ray: a Ray Train run of 2 gloo workers per unit, on a real local
Ray of 2 CPUs (the module's `local_ray`), inside the wave machinery.

`test_two_ranks_*` launch a one-fold grid (prepare, stage 1, stage 2) with `procs_per_unit: 2`
and check its records; the failure tests break a unit through its inputs (a data dir that is
not there) or kill one of its ranks whenever it runs, as the OOM killer would.
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
from functools import partial
from pathlib import Path

import pytest
from ray.exceptions import ActorDiedError

from fer_core.errors import FerError
from orchestrator.backends.ray.backend import RayBackend
from orchestrator.backends.ray.cluster import check_fits
from orchestrator.backends.ray.train import concurrent_units, rank_failure, rank_log
from orchestrator.backends.ray.trial import launcher_free
from orchestrator.plan.profiles import RayProfile, UnitRanks, load_profile
from orchestrator.plan.unit import Unit
from orchestrator.run import worker
from orchestrator.run.launch import launch
from orchestrator.run.rundir import RunDir
from orchestrator.run.states import State
from orchestrator.run.status import status_rows
from tests.helpers import (
    assert_grid_done_once,
    prepare_run,
    small_grid,
    wait_mid_training,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("ray_left_as_found")

EPOCHS = 2
GRID = small_grid(name="ray2proc", folds="[1]", image_size=(64, 48), epochs=EPOCHS)
# Two 1-CPU ranks per unit fill the local Ray's 2 CPUs; a rank that dies is retried once.
CLUSTER = """
ray2:
  backend: ray
  num_cpus: 2
  cpus_per_trial: 1
  procs_per_unit: 2
  max_failures: 1
  collective_timeout_s: 60
ray3:
  backend: ray
  num_cpus: 2
  cpus_per_trial: 1
  procs_per_unit: 3
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    """(grid, cluster file) of this module."""
    folder = tmp_path_factory.mktemp("ray2proc")
    grid, cluster = folder / "grid.yaml", folder / "cluster.yaml"
    grid.write_text(GRID)
    cluster.write_text(CLUSTER)
    return grid, cluster


def _profile(cluster: Path, name: str) -> RayProfile:
    profile = load_profile(name, cluster)
    assert isinstance(profile, RayProfile)
    return profile


# --- no Ray needed -------------------------------------------------------------------------


def test_check_fits_refuses_ranks_that_the_cluster_cannot_hold():
    two_cpus = {"CPU": 2.0}
    check_fits(RayProfile(procs_per_unit=2), two_cpus, "ray profile", UnitRanks(2))
    with pytest.raises(FerError, match=r"3 ranks \(procs_per_unit\) needs 3 CPUs .* has 2"):
        check_fits(RayProfile(procs_per_unit=3), two_cpus, "ray profile", UnitRanks(3))
    # Each rank takes cpus_per_trial CPUs: 2 ranks of 1.5 CPUs do not fit on 2.
    with pytest.raises(FerError, match="needs 3 CPUs"):
        check_fits(RayProfile(cpus_per_trial=1.5), two_cpus, "ray profile", UnitRanks(2))
    with pytest.raises(FerError, match=r"4 ranks \(gpus_per_unit\) needs 4 GPUs .* has 2"):
        check_fits(RayProfile(gpus_per_unit=4), {"CPU": 8, "GPU": 2}, "x", UnitRanks(4, gpu=True))


def test_a_wave_runs_no_more_multi_rank_units_than_fit():
    profile = RayProfile(cpus_per_trial=1)
    assert concurrent_units(profile, {"CPU": 5}, [UnitRanks(2), UnitRanks(1)]) == 2
    assert concurrent_units(profile, {"CPU": 1}, [UnitRanks(2)]) == 1  # check_fits refuses it
    limited = RayProfile(cpus_per_trial=1, max_concurrent=1)
    assert concurrent_units(limited, {"CPU": 8}, [UnitRanks(2)]) == 1
    assert concurrent_units(profile, {"CPU": 8}, [UnitRanks(1)]) is None  # Tune decides
    gpus = RayProfile(gpus_per_unit=2, cpus_per_trial=2)
    assert concurrent_units(gpus, {"CPU": 64, "GPU": 4}, [UnitRanks(2, gpu=True)]) == 2


def test_a_ranks_failure_names_the_rank_and_tells_a_death_from_an_error():
    error = rank_failure({1: ValueError("bad pixels")}, 2)
    assert error == type(error)(False, "rank 1 of 2: ValueError: bad pixels")
    died = rank_failure({0: RuntimeError("Connection closed by peer"), 1: ActorDiedError()}, 2)
    assert died.died and died.reason.startswith("rank 1 of 2: its Ray Train worker process died")
    # Ray has not seen the death yet; the survivor's collective has.
    lost = rank_failure({0: FerError("rank 1 of 2 stopped answering (killed...)")}, 2)
    assert lost.died and lost.reason.startswith("rank 0 of 2: rank 1 of 2 stopped answering")


def test_a_unit_inherits_no_slurm_job_and_no_rank_from_its_launcher():
    env = {
        "PATH": "/bin",
        "SLURM_JOB_ID": "7",
        "SLURM_NTASKS": "2",
        "RANK": "1",
        "MASTER_PORT": "9",
    }
    assert launcher_free(env) == {"PATH": "/bin"}


# --- a real local Ray ----------------------------------------------------------------------


@pytest.mark.ray
def test_a_unit_too_wide_for_the_cluster_is_refused_before_any_trial(files, local_ray, tmp_path):
    grid, cluster = files
    rundir, roles = prepare_run(grid, tmp_path / "run")
    with pytest.raises(FerError, match=r"3 ranks \(procs_per_unit\) needs 3 CPUs"):
        RayBackend(_profile(cluster, "ray3")).submit(rundir, list(roles.values()))
    assert not rundir.submissions()


@pytest.fixture(scope="module")
def two_rank_run(files, local_ray, tmp_path_factory) -> RunDir:
    """The grid launched (`launch`, in this process, on the module's Ray) with 2 ranks per
    training unit, to the end."""
    grid, cluster = files
    run = tmp_path_factory.mktemp("ray2run") / "run"
    launch(str(grid), cluster="ray2", cluster_file=cluster, run_dir=run, out=io.StringIO())
    return RunDir(run)


@pytest.mark.ray
@pytest.mark.slow
def test_two_ranks_each_unit_trains_once_over_every_test_image(two_rank_run):
    rundir = two_rank_run
    runs = assert_grid_done_once(rundir, EPOCHS)  # one prediction per test image, once
    assert len(runs) == 2
    for row in runs.values():
        assert (row["world_size"], row["nodes"], row["dist_backend"]) == (2, 1, "gloo")
        assert len(row["rank_images_per_second"]) == 2
        assert row["scheduler"] == "ray"
        # Rank 0 keeps the log of record; rank 1's is beside it.
        assert rundir.unit_log(row["unit_id"], "ray").is_file()
        assert rundir.rank_log(row["unit_id"], "ray", 1).is_file()
    assert {s["attempts"] for s in rundir.submissions().values()} == {1}


@pytest.mark.ray
@pytest.mark.slow
def test_two_ranks_stage_2_starts_from_its_parents_best(two_rank_run):
    runs = {r["unit_id"]: r for r in two_rank_run.store.read("runs").to_pylist()}
    (row,) = [r for r in runs.values() if r["stage"] == 2]
    assert runs[row["parent_id"]]["stage"] == 1
    assert row["parent_weights_sha"] == row["start_weights_sha"]


@pytest.fixture(scope="module")
def prepared(files, tmp_path_factory) -> Path:
    """A run dir of the grid whose data unit is done (run in this process, no Ray)."""
    grid, _ = files
    rundir, roles = prepare_run(grid, tmp_path_factory.mktemp("ray2prepared") / "run")
    assert worker.run(rundir.path, roles["prepare"].id) == "done"
    return rundir.path


def _copy(grid: Path, prepared: Path, path: Path) -> tuple[RunDir, dict[str, Unit]]:
    """A run dir of the grid with its data prepared (copied from `prepared`)."""
    shutil.copytree(prepared / "data", path / "data")
    shutil.copytree(prepared / "store" / "prepare", path / "store" / "prepare")
    return prepare_run(grid, path)


def _edit_config(rundir: RunDir, unit: Unit, **values: object) -> None:
    """Change what the worker will run for `unit` (its units/<id>/spec.json)."""
    path = rundir.unit_dir(unit.id) / "spec.json"
    body = json.loads(path.read_text())
    body["spec"].update(values)
    path.write_text(json.dumps(body))


@pytest.mark.ray
@pytest.mark.slow
def test_a_ranks_error_fails_the_unit_once_and_blocks_its_child(
    files, prepared, local_ray, tmp_path
):
    grid, cluster = files
    rundir, roles = _copy(grid, prepared, tmp_path / "run")
    _edit_config(rundir, roles["s1f1"], data_dir=str(tmp_path / "gone"))
    backend = RayBackend(_profile(cluster, "ray2"))
    backend.submit(rundir, [roles["s1f1"], roles["s2f1"]])
    rows = {r["name"]: r for r in status_rows(rundir, backend)}
    assert rows[roles["s1f1"].name]["state"] == State.FAILED
    assert str(tmp_path / "gone") in rows[roles["s1f1"].name]["detail"]
    assert rows[roles["s2f1"].name]["state"] == State.BLOCKED
    # Not retried: a deterministic error would fail again. One error line in rank 0's log.
    assert rundir.unit_log(roles["s1f1"].id, "ray").read_text().count("error: ") == 1


def _rank_processes(log: Path) -> list[int]:
    """The processes whose stdout is `log` (a rank while it runs its unit)."""
    found = []
    for fd in Path("/proc").glob("[0-9]*/fd/1"):
        with contextlib.suppress(OSError):
            if os.readlink(fd) == str(log):
                found.append(int(fd.parent.parent.name))
    return found


def _stopped(log: Path) -> bool:
    return not _rank_processes(log)


class RankKiller(threading.Thread):
    """SIGKILLs the process of rank 1 of a unit whenever it runs (as the OOM killer would)."""

    def __init__(self, log: Path):
        super().__init__(daemon=True)
        self.log = log
        self.killed: set[int] = set()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for pid in _rank_processes(self.log):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self.killed.add(pid)
            time.sleep(0.05)


@pytest.mark.ray
@pytest.mark.slow
def test_a_rank_that_dies_is_retried_then_fails_naming_the_rank(
    files, prepared, local_ray, tmp_path
):
    grid, cluster = files
    rundir, roles = _copy(grid, prepared, tmp_path / "run")
    unit = roles["s1f1"]
    profile = _profile(cluster, "ray2")
    killer = RankKiller(rundir.rank_log(unit.id, "ray", 1))
    killer.start()
    try:
        RayBackend(profile).submit(rundir, [unit])
    finally:
        killer.done.set()
        killer.join()
    (row,) = [r for r in status_rows(rundir, RayBackend(profile)) if r["name"] == unit.name]
    assert row["state"] == State.FAILED
    assert "rank 1 of 2: its Ray Train worker process died" in row["detail"]
    assert len(killer.killed) == 1 + profile.max_failures  # each attempt, then no more


@pytest.mark.ray
@pytest.mark.slow
def test_a_rank_killed_mid_training_is_retried_from_its_last_epoch(
    files, prepared, local_ray, tmp_path
):
    grid, cluster = files
    rundir, roles = _copy(grid, prepared, tmp_path / "run")
    unit, epochs = roles["s1f1"], 3
    config = rundir.read_spec(unit.id)["spec"]["config"]
    _edit_config(rundir, unit, config={**config, "epochs": epochs, "lr_step_epoch": epochs - 1})
    rank1 = rundir.rank_log(unit.id, "ray", 1)
    killed: list[int] = []

    def kill_rank_1_once() -> None:
        wait_mid_training(rundir, unit.id, 1, epochs, timeout=300)
        for pid in _rank_processes(rank1):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    killer = threading.Thread(target=kill_rank_1_once, daemon=True)
    killer.start()
    RayBackend(_profile(cluster, "ray2")).submit(rundir, [unit])
    killer.join()
    assert killed, "rank 1 was not found running"
    runs, epoch_rows = rundir.store.read("runs"), rundir.store.read("epochs", {unit.id})
    assert runs is not None and epoch_rows is not None
    (row,) = runs.to_pylist()
    assert row["resumed_from_epoch"] >= 1  # from last.pt, not from scratch
    assert [r["epoch"] for r in epoch_rows.to_pylist()] == list(range(1, epochs + 1))
    assert rundir.failure(unit.id) is None


@pytest.mark.ray
@pytest.mark.slow
def test_cancel_stops_every_rank_and_is_not_a_failure(files, prepared, local_ray, tmp_path):
    grid, cluster = files
    rundir, roles = _copy(grid, prepared, tmp_path / "run")
    unit = roles["s1f1"]
    config = rundir.read_spec(unit.id)["spec"]["config"]
    _edit_config(rundir, unit, config={**config, "epochs": 500, "lr_step_epoch": 499})
    logs = [rank_log(rundir, unit.id, rank) for rank in (0, 1)]
    backend = RayBackend(_profile(cluster, "ray2"))

    def cancel_when_running() -> None:
        wait_until(lambda: all(_rank_processes(log) for log in logs), 300, "both ranks")
        backend.cancel(rundir)

    canceller = threading.Thread(target=cancel_when_running, daemon=True)
    canceller.start()
    with pytest.raises(FerError, match="cancelled"):
        backend.submit(rundir, [unit])
    canceller.join()
    for log in logs:
        wait_until(partial(_stopped, log), 60, f"{log.name}'s rank to stop")
    assert not rundir.store.is_done(unit.id, "train")
    assert rundir.failure(unit.id) is None, "cancelled: not a failure"
