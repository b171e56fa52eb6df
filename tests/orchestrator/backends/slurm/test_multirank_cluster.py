"""Multi-rank units on the one-node SLURM of scripts/local_slurm.sh (2 CPUs): a unit of 2
ranks (2 tasks of one CPU, gloo) that a requeue restarts with a fresh rendezvous, one whose
rank is SIGKILLed mid-epoch, and a launch from inside an allocation.

Marked `slurm`: they run only with FER_TEST_SLURM=1 against that cluster
(tests.helpers.slurm_gate). A 2-rank job takes the whole node, so these units run one at a
time; the allocation test holds one CPU and runs one-rank units on the other.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from orchestrator.backends.slurm.backend import SlurmBackend
from orchestrator.backends.slurm.jobs import rendezvous_port
from orchestrator.plan.profiles import load_profile
from orchestrator.run.launch import launch
from orchestrator.run.rundir import RunDir
from orchestrator.run.status import status_rows
from tests.helpers import (
    REPO,
    _release_if_held,
    cli_env,
    epochs_done,
    job_logs,
    roles,
    scontrol_job,
    slurm_finished,
    small_grid,
    wait_mid_training,
    wait_requeued_to_end,
    wait_until,
)

pytestmark = pytest.mark.slurm

# Two ranks of one CPU each: the node's 2 CPUs; 2 GB for the two torch processes.
RANKS2 = """
ranks2:
  backend: slurm
  partition: debug
  cpus_per_job: 1
  mem_gb: 2
  time_min: 10
  procs_per_unit: 2
  collective_timeout_s: 60
"""
RANK_LINE = re.compile(r"rank (\d) of 2 .* in job (\S+): rendezvous (\S+):(\d+), restart (\d+)")


@pytest.fixture
def ranks2(tmp_path, cluster_file) -> Path:
    """The tests' cluster file plus the 2-rank profile."""
    path = tmp_path / "cluster.yaml"
    path.write_text(cluster_file.read_text() + RANKS2)
    return path


@pytest.fixture
def cancel_after(ranks2):
    """Cancel whatever the test's run dirs still have queued, pass or fail."""
    rundirs: list[RunDir] = []
    yield rundirs.append
    for rundir in rundirs:
        with contextlib.suppress(Exception):
            SlurmBackend(load_profile("ranks2", ranks2)).cancel(rundir)


def one_unit_grid(tmp: Path, name: str, root: Path, epochs: int = 6) -> Path:
    """Preparation and one training unit (ce, fold 1) on the twin at `root`; 48 px crops make
    epochs of a second or more, so a unit can be caught between epoch 1 and its last."""
    path = tmp / f"{name}.yaml"
    path.write_text(small_grid(name=name, strategies="[ce]", root=root, epochs=epochs, crop=48))
    return path


def run_row(rundir: RunDir, unit_id: str) -> dict:
    return next(r for r in rundir.store.read("runs").to_pylist() if r["unit_id"] == unit_id)


def rank_lines(rundir: RunDir, job: str) -> list[tuple[int, str, int, int]]:
    """(rank, master addr, port, restart) of every rank line in the job's task logs."""
    found = []
    for log in sorted(rundir.path.glob(f"arrays/*/{job}_[01]_log.out")):
        for line in log.read_text(errors="replace").splitlines():
            match = RANK_LINE.search(line)
            if match is not None:
                rank, _, addr, port, restart = match.groups()
                found.append((int(rank), addr, int(port), int(restart)))
    return sorted(found, key=lambda item: (item[3], item[0]))


def test_a_requeued_two_rank_job_resumes_with_a_fresh_rendezvous_and_finishes(
    tmp_path, ranks2, cancel_after, twin_root
):
    """`scontrol requeue` (SIGTERM to every rank), then a preemption notice (USR2: rank 0
    requeues, rank 1 stops quietly): each run meets at its own port, resumes and the unit
    finishes as one 2-rank unit, never recorded as failed."""
    grid = one_unit_grid(tmp_path, "ranksrequeue", twin_root, epochs=8)
    run = tmp_path / "run"
    cancel_after(RunDir(run))
    rundir = launch(str(grid), cluster="ranks2", cluster_file=ranks2, run_dir=run)
    backend = SlurmBackend(load_profile("ranks2", ranks2))
    unit = roles(rundir.read_dag())["s1f1"]
    job = str(rundir.submissions()[unit.id]["job_id"])
    assert re.search(r"\bNumTasks=2\b", scontrol_job(job)), scontrol_job(job)

    done = wait_mid_training(rundir, unit.id, 1, 7, 180, job_logs(rundir))
    subprocess.run(["scontrol", "requeue", job], check=True)
    wait_until(lambda: "Restarts=1" in scontrol_job(job), 60, "the requeue", 0.5, job_logs(rundir))
    # the second run trains an epoch of its own, then gets the preemption notice
    wait_until(
        lambda: _release_if_held(job) or epochs_done(rundir, unit.id) > done,
        180,
        "an epoch of the requeued run",
        0.05,
        job_logs(rundir),
    )
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    wait_until(lambda: "Restarts=2" in scontrol_job(job), 60, "the second requeue", 0.5)
    wait_requeued_to_end(backend, rundir, job, 240, "the twice requeued 2-rank job")

    row = run_row(rundir, unit.id)
    assert (row["world_size"], row["nodes"], row["dist_backend"]) == (2, 1, "gloo")
    assert row["resumed_from_epoch"] > done and row["requeues"] == 2 and row["job_id"] == job
    assert len(row["rank_images_per_second"]) == 2
    assert rundir.failure(unit.id) is None  # a requeue is no failure, on any rank
    lines = rank_lines(rundir, job)
    # each rank logged each run; the runs met at their own ports, the ranks of a run at one
    runs = [(rank, restart) for rank, _, _, restart in lines]
    assert runs == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    ports = {restart: {port for _, _, port, r in lines if r == restart} for restart in (0, 1, 2)}
    assert ports == {r: {rendezvous_port(job, r)} for r in (0, 1, 2)}
    assert len({port for (port,) in ports.values()}) == 3
    # Rank 1 "stops quietly" on the notice: no failure above, whatever it got to print. Its
    # handler's "stopping for the requeue" line is not asserted: a rank blocked in a gloo
    # collective runs Python's USR2 handler only once the collective returns, and the
    # requeue's SIGTERM may end it first (seen in 1 of 3 CI runs).
    print("\n".join(_quoted(rundir, job)))  # for the record (pytest -s)


def _quoted(rundir: RunDir, job: str) -> list[str]:
    return [
        f"{log.name}: {line}"
        for log in sorted(rundir.path.glob(f"arrays/*/{job}_[01]_log.out"))
        for line in log.read_text(errors="replace").splitlines()
        if RANK_LINE.search(line)
    ]


def _rank_process(job: str, rank: int) -> psutil.Process | None:
    """The process of task `rank` of SLURM job `job` (submitit's, in the job's step)."""
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if "submitit.core._submit" not in " ".join(process.info["cmdline"] or []):
                continue
            env = process.environ()
            if env.get("SLURM_JOB_ID") == job and env.get("SLURM_PROCID") == str(rank):
                return process
    return None


def test_a_sigkilled_rank_fails_the_unit_within_a_minute_named_and_a_relaunch_resumes(
    tmp_path, ranks2, cancel_after, twin_root
):
    grid = one_unit_grid(tmp_path, "rankskill", twin_root)
    run = tmp_path / "run"
    cancel_after(RunDir(run))
    rundir = launch(str(grid), cluster="ranks2", cluster_file=ranks2, run_dir=run)
    backend = SlurmBackend(load_profile("ranks2", ranks2))
    unit = roles(rundir.read_dag())["s1f1"]
    job = str(rundir.submissions()[unit.id]["job_id"])

    wait_mid_training(rundir, unit.id, 1, 6, 180, job_logs(rundir))
    victim = wait_until(lambda: _rank_process(job, 1), 30, "rank 1's process")
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(lambda: slurm_finished(backend, rundir), 60, "the job to end", 0.5, job_logs(rundir))
    assert time.monotonic() - killed_at < 60  # the bound: no hang to the time limit
    row = next(r for r in status_rows(rundir, backend) if r["unit_id"] == unit.id)
    assert row["state"] == "failed" and re.search(r"\brank 1\b", row["detail"]), row
    assert rundir.failure(unit.id) == row["detail"]
    assert not rundir.is_done(unit.id)

    launch(str(grid), cluster="ranks2", cluster_file=ranks2, run_dir=run, wait=True)
    row = run_row(rundir, unit.id)
    assert row["resumed_from_epoch"] >= 1 and row["world_size"] == 2
    assert rundir.failure(unit.id) is None


def test_a_launch_inside_an_allocation_submits_jobs_of_their_own(tmp_path, cluster_file, twin_root):
    """`salloc` with --mem-per-cpu: its SLURM_MEM_PER_CPU, inherited by a job that asks for
    --mem, makes srun refuse to start ("mutually exclusive"); the jobs run with their own ids.
    The allocation holds one CPU, the units (one rank each) the other."""
    grid = one_unit_grid(tmp_path, "ranksnested", twin_root, epochs=1)
    run = tmp_path / "run"
    launched = subprocess.run(
        ["salloc", "-n1", "-c1", "--mem-per-cpu=300M", "-p", "debug", "-t", "10", "-J",
         "fer-test-alloc", "bash", "-c", 'echo "allocation $SLURM_JOB_ID" && exec "$@"', "bash",
         sys.executable, "-m", "orchestrator", "launch", "--grid", str(grid), "--cluster",
         "test", "--cluster-file", str(cluster_file), "--run-dir", str(run), "--wait"],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=cli_env(),
    )  # fmt: skip
    rundir = RunDir(run)
    assert launched.returncode == 0, launched.stdout[-2000:] + launched.stderr[-2000:]
    allocation = re.search(r"allocation (\d+)", launched.stdout)
    assert allocation is not None, launched.stdout
    rows = rundir.store.read("runs").to_pylist()
    assert len(rows) == 1 and rows[0]["scheduler"] == "slurm"
    jobs = {str(record["job_id"]) for record in rundir.submissions().values()}
    assert rows[0]["job_id"] in jobs and allocation.group(1) not in jobs
