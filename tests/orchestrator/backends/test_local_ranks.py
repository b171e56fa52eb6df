"""Data-parallel units on the local backend (`procs_per_unit: 2`), with real processes and a
real gloo process group: a 2-rank grid finishes with one set of records, a rank killed
mid-epoch fails its unit at once naming the rank and a re-launch resumes it, a global batch
that does not split over the ranks is refused before anything is written, and the failure
records of a unit's ranks keep the lowest rank's words.

`two_rank_run` is launched once and shared: tests only read it; a test that re-launches or
breaks something does so in its own copy (`private_copy`)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from orchestrator.backends.local import LocalBackend
from orchestrator.plan.profiles import LocalProfile, load_profile
from orchestrator.run import worker
from orchestrator.run.launch import launch
from orchestrator.run.rundir import RunDir
from orchestrator.run.status import status_rows
from tests.helpers import (
    SMALL_IMAGE,
    Background,
    alive,
    assert_grid_done_once,
    cli,
    epochs_done,
    prepare_run,
    private_copy,
    small_grid,
    tiny_ckplus,
    wait_mid_training,
    wait_until,
)

CLUSTER = """
two:
  backend: local
  jobs: 1
  threads_per_job: 1
  procs_per_unit: 2
"""
# 48 px crops of the session-sized twin: an epoch takes long enough to kill a rank inside it.
GRID = small_grid(name="ranks", strategies="[ce]", image_size=SMALL_IMAGE, crop=48)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    path = tmp_path_factory.mktemp("cluster") / "cluster.yaml"
    path.write_text(CLUSTER)
    return path


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory, cluster):
    tmp = tmp_path_factory.mktemp("ranks")
    grid = tmp / "grid.yaml"
    grid.write_text(GRID)
    rundir = launch(str(grid), cluster="two", run_dir=tmp / "run", cluster_file=cluster)
    return grid, rundir


def _train(rundir: RunDir):
    return next(u for u in rundir.read_dag() if u.kind == "train")


def test_a_two_rank_unit_lands_once_with_its_ranks_recorded(two_rank_run):
    """One runs row (rank 0's) naming 2 gloo ranks on 1 node with a throughput each, and
    every test image predicted exactly once (the ranks' shards gathered, none twice)."""
    _, rundir = two_rank_run
    unit = _train(rundir)
    row = assert_grid_done_once(rundir, 2)[unit.id]
    assert (row["world_size"], row["nodes"], row["dist_backend"]) == (2, 1, "gloo")
    assert len(row["rank_images_per_second"]) == 2
    assert all(rate > 0 for rate in row["rank_images_per_second"])
    predictions = rundir.store.read("predictions", {unit.id})
    ids = predictions.column("image_id").to_pylist()
    assert row["n_test"] == len(ids) == len(set(ids)) > 0
    # rank 0 keeps the unit's log and records; rank 1's log lies beside it
    unit_dir = rundir.unit_dir(unit.id)
    assert (unit_dir / "local.log").read_text().rstrip().endswith(f"{unit.id}: done")
    assert (
        (unit_dir / "local.rank1.log").read_text().rstrip().endswith(f"{unit.id}: rank 1 of 2 done")
    )
    record = rundir.submissions()[unit.id]
    assert [p["pid"] for p in record["ranks"]][0] == int(record["job_id"])
    assert len(record["ranks"]) == 2 and all(p["start"] for p in record["ranks"])
    resources = rundir.store.read("resources", {unit.id}).to_pylist()
    assert len(resources) == 1 and resources[0]["outcome"] == "done"  # rank 0's attempt only
    assert rundir.failure(unit.id) is None


EPOCHS = 8  # of the unit a test breaks: long enough to catch mid-training


def _mid_training(two_rank_run, cluster, tmp_path):
    """A background launch of an 8-epoch 2-rank unit (a copy of the shared run: its data
    unit is done) caught mid-training: (run dir, launcher, unit, epochs done, launch args)."""
    rundir = private_copy(two_rank_run[1], tmp_path)
    shorter = _train(rundir).id
    grid = tmp_path / "grid.yaml"  # the same data unit, a new training
    grid.write_text(GRID.replace("epochs: 2", f"epochs: {EPOCHS}"))
    args = ["launch", "--grid", grid, "--run-dir", rundir.path, "--cluster", "two"]
    args += ["--cluster-file", cluster]
    launcher = Background(*args, cwd=tmp_path, name="first")

    def started():
        unit = _train(rundir)
        return unit if unit.id != shorter and unit.id in rundir.submissions() else None

    try:
        unit = wait_until(started, 120, "the 8-epoch unit to start", explain=launcher.output)
        done = wait_mid_training(rundir, unit.id, 1, EPOCHS - 1, 240, explain=launcher.output)
    except BaseException:
        launcher.kill_group()
        raise
    return rundir, launcher, unit, done, args


@pytest.mark.parametrize("victim", [1, 0])
def test_a_rank_killed_mid_epoch_fails_the_unit_at_once_and_a_relaunch_resumes(
    two_rank_run, cluster, tmp_path, victim
):
    """Fault: one rank of a 2-rank unit gets SIGKILL in the middle of training (rank 1, or
    rank 0, which keeps the records). Expect: the launcher ends the other rank and the
    unit fails within a minute, naming the killed rank and the signal (the issue's bound;
    the collective timeout is 300 s), over what the survivor said of its loss; a re-launch
    resumes from the last epoch checkpoint on both ranks and finishes."""
    rundir, first, unit, _, args = _mid_training(two_rank_run, cluster, tmp_path)
    try:
        ranks = rundir.submissions()[unit.id]["ranks"]
        os.kill(ranks[victim]["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        done_at_kill = epochs_done(rundir, unit.id)
        code = first.wait(60)
        seen_after = time.monotonic() - killed_at  # the launch has ended: failed.json is final
    finally:
        first.kill_group()
    named = f"rank {victim} of 2"
    print(f"{named} SIGKILLed at epoch {done_at_kill}: launch ended {seen_after:.1f} s later")
    assert code == 1, first.output()
    reason = rundir.failure(unit.id)
    assert reason and reason.startswith(f"{named} was killed by SIGKILL"), reason
    assert "re-launch resumes" in reason and named in first.output()
    assert not alive(ranks[1 - victim]["pid"]), "the surviving rank outlived its group"
    rows = {r["unit_id"]: r for r in status_rows(rundir, LocalBackend(LocalProfile()))}
    assert rows[unit.id]["state"] == "failed" and named in rows[unit.id]["detail"]
    assert not rundir.store.is_done(unit.id, "train")

    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    row = rundir.store.read("runs", {unit.id}).to_pylist()[0]
    epoch_rows = rundir.store.read("epochs", {unit.id}).column("epoch").to_pylist()
    assert epoch_rows == list(range(1, EPOCHS + 1))
    assert rundir.store.read("predictions", {unit.id}).num_rows == row["n_test"]
    assert row["resumed_from_epoch"] >= max(1, done_at_kill), (row, done_at_kill)
    assert row["world_size"] == 2 and rundir.failure(unit.id) is None
    assert rundir.submissions()[unit.id]["attempts"] == 2


def test_a_killed_launchers_ranks_are_seen_running_and_cancel_stops_them_all(
    two_rank_run, cluster, tmp_path
):
    """Fault: the launcher gets SIGKILL while a 2-rank unit trains (its ranks live on).
    Expect: `status` shows the unit running; `cancel` stops both ranks, and the unit is
    stopped, not failed (to do: a re-launch resumes it)."""
    rundir, launcher, unit, _, _ = _mid_training(two_rank_run, cluster, tmp_path)
    ranks = rundir.submissions()[unit.id]["ranks"]
    try:
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.process.wait(30)
        assert all(alive(p["pid"]) for p in ranks), "the ranks should outlive their launcher"
        rows = {r["unit_id"]: r for r in status_rows(rundir, LocalBackend(LocalProfile()))}
        assert rows[unit.id]["state"] == "running", rows[unit.id]
        result = cli("cancel", "--run-dir", rundir.path, cwd=tmp_path)
    finally:
        launcher.kill_group()
    assert result.returncode == 0 and "cancelled 1 units" in result.stdout, result.stdout
    assert not any(alive(p["pid"]) for p in ranks)
    assert rundir.failure(unit.id) is None
    rows = {r["unit_id"]: r for r in status_rows(rundir, LocalBackend(LocalProfile()))}
    assert rows[unit.id]["state"] == "todo", rows[unit.id]


def test_ctrl_c_stops_a_two_rank_unit_without_recording_a_failure(two_rank_run, cluster, tmp_path):
    """Fault: Ctrl-C (SIGINT to the launcher, its fork server and both ranks) mid-training.
    Expect: the launch exits as interrupted (130) and the unit is stopped, not failed,
    whichever rank noticed the other's end first."""
    rundir, launcher, unit, _, _ = _mid_training(two_rank_run, cluster, tmp_path)
    try:
        os.killpg(launcher.pid, signal.SIGINT)
        code = launcher.wait(60)
    finally:
        launcher.kill_group()
    assert code == 130, launcher.output()
    assert "Traceback" not in launcher.stderr(), launcher.stderr()
    assert rundir.failure(unit.id) is None
    assert not any(alive(p["pid"]) for p in rundir.submissions()[unit.id]["ranks"])
    rows = {r["unit_id"]: r for r in status_rows(rundir, LocalBackend(LocalProfile()))}
    assert rows[unit.id]["state"] == "todo", rows[unit.id]


def test_a_global_batch_that_does_not_split_over_the_ranks_is_refused(cluster, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(small_grid(name="odd", strategies="[ce]", batch_size=33))
    run = tmp_path / "run"
    result = cli(
        "launch", "--grid", grid, "--run-dir", run, "--cluster", "two",
        "--cluster-file", cluster, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "batch_size 33" in lines[0] and "2 ranks" in lines[0], lines
    assert not run.exists()


def test_the_shipped_local_2proc_profile_runs_units_as_two_ranks():
    profile = load_profile("local-2proc")
    assert isinstance(profile, LocalProfile) and profile.procs_per_unit == 2


def test_a_ranks_failure_is_recorded_only_where_no_lower_rank_of_its_group_spoke(
    tmp_path, monkeypatch
):
    """Ranks of one process group (one rendezvous) fail at nearly the same moment: rank 0's
    reason always stands, a higher rank's only where no lower rank of the same group wrote
    one (rank 0 died, say), and it names itself. An earlier attempt's record is replaced."""
    rundir = RunDir(tmp_path / "run")
    group = "127.0.0.1:29500"
    assert rundir.mark_failed("u", "rank 2 of 3: lost rank 0", rank=2, group=group)
    assert rundir.mark_failed("u", "rank 1 of 3: lost rank 0", rank=1, group=group)
    assert not rundir.mark_failed("u", "rank 2 of 3: later", rank=2, group=group)
    assert rundir.mark_failed("u", "rank 2 of 3: a new attempt", rank=2, group="127.0.0.1:1")
    assert rundir.failure("u") == "rank 2 of 3: a new attempt"
    assert rundir.mark_failed("u", "rank 2 of 3: lost rank 1", rank=2, group=group)
    assert rundir.mark_failed("u", "out of memory", rank=0, group=group)
    assert not rundir.mark_failed("u", "rank 1 of 3: lost rank 0", rank=1, group=group)
    assert rundir.failure("u") == "out of memory"

    # a rank > 0 whose unit cannot even start records that, naming its rank and group
    grid = tmp_path / "grid.yaml"
    grid.write_text(small_grid(root=tiny_ckplus(tmp_path / "ck", subjects=10), epochs=1))
    rundir, units = prepare_run(grid, tmp_path / "run2")
    unit = units["s1f1"]
    spec = json.loads((rundir.unit_dir(unit.id) / "spec.json").read_text())
    spec["spec"]["colour"] = "blue"
    (rundir.unit_dir(unit.id) / "spec.json").write_text(json.dumps(spec))
    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MASTER_PORT", "29501")
    assert worker.main([str(rundir.path), unit.id]) == 1
    assert rundir.failure(unit.id) == "rank 1 of 2: unit spec: unknown key 'colour'"
    body = json.loads(rundir.failed_path(unit.id).read_text())
    assert (body["rank"], body["group"]) == (1, "127.0.0.1:29501")
    assert rundir.store.read("resources") is None  # a rank > 0 keeps no resources row
