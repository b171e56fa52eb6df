"""Faults on a real one-node SLURM (scripts/local_slurm.sh up): a job requeued by hand and a
job hitting its --time (submitit checkpoints and requeues it), slurmd killed under running
jobs, the orchestrator killed halfway through submitting a grid (between two sbatch calls,
and between an sbatch and its record), and a unit failing inside a job of packed units.

Each test's dataset has a name of its own, so its SLURM job names (fer-<dataset>_f01_...) are
unique and `sacct --name` counts exactly this test's submissions.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from orchestrator.backends.slurm.backend import SlurmBackend
from orchestrator.backends.slurm.jobs import (
    array_tasks,
    expand_job_ids,
    job_key,
    run_tag,
    tagged_jobs,
)
from orchestrator.plan.profiles import load_profile
from orchestrator.run.launch import launch
from orchestrator.run.rundir import RunDir
from orchestrator.run.states import State
from orchestrator.run.status import status_rows
from tests.helpers import (
    REPO,
    RETRY,
    alive,
    assert_grid_done_once,
    cli,
    cli_env,
    epochs_done,
    job_logs,
    node_held,
    prepare_run,
    roles,
    scontrol_job,
    slurm_finished,
    wait_mid_training,
    wait_requeued_to_end,
    wait_until,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]  # slurm: see tests.helpers.slurm_gate

# sacct -S without -s leaves out a job cancelled before it started (never eligible); with -s
# it needs -E too (else the window ends where it starts, and only squeue's jobs are seen).
SACCT_STATES = "PD,R,RQ,RS,S,CA,CD,F,TO,OOM,NF,PR,DL,BF"
SLURMD_PID = Path(os.environ.get("FER_SLURM_STATE", "/var/lib/fer-slurm")) / "run" / "slurmd.pid"


@pytest.fixture
def slurm_study(study, cluster_file):
    """study(...) on a dataset named for this test, plus the cluster file and a cleanup that
    cancels whatever the run dir still has queued (pass or fail)."""
    made: list[Path] = []

    def make(**kwargs):
        dataset = "ck" + uuid.uuid4().hex[:8]
        grid, run = study(dataset=dataset, **kwargs)
        made.append(run)
        return grid, run, cluster_file, time.time()

    yield make
    for run in made:
        with contextlib.suppress(Exception):
            SlurmBackend(load_profile("test", cluster_file)).cancel(RunDir(run))


def sacct(since: float, fields: str) -> list[str]:
    """`sacct` lines (`|`-separated `fields`) of every job since `since`, in any state."""
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since - 5))
    argv = ["sacct", "-X", "-n", "-P", "-S", start, "-E", "now", "-s", SACCT_STATES, "-o", fields]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines()


def squeue(fields: str) -> list[str]:
    """`squeue` lines (`|`-separated %-`fields`) of every job the controller still knows."""
    argv = ["squeue", "-h", "-r", "-t", "all", "-o", fields]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines()


def jobs_per_unit(rundir: RunDir, since: float) -> Counter:
    """How many SLURM jobs (array tasks) each unit of `rundir` had: the controller's (squeue,
    which knows a job the moment sbatch returns) and the accounting's (sacct, since `since`),
    by task id, mapped to units by the run dir's tag and array key in the job's comment."""
    prefix = run_tag(rundir.path) + ":"
    keys: dict[str, str] = {}
    for line in squeue("%i|%k") + sacct(since, "JobID,Comment"):
        job, _, comment = line.strip().partition("|")
        if comment.startswith(prefix):
            keys.update(dict.fromkeys(expand_job_ids(job), comment[len(prefix) :]))
    counts: Counter = Counter()
    for job, key in keys.items():
        counts.update(array_tasks(rundir.path, key)[max(job_key(job)[1], 0)])
    return counts


def _assert_jobs_match_the_record(rundir: RunDir, since: float) -> None:
    """SLURM holds exactly the jobs the run dir recorded: one per attempt, none unrecorded."""
    train = [u for u in rundir.read_dag() if u.kind == "train"]
    counts = jobs_per_unit(rundir, since)
    records = rundir.submissions()
    assert {u.name: counts[u.id] for u in train} == {
        u.name: records[u.id]["attempts"] for u in train
    }


def _assert_one_job_per_unit(rundir: RunDir, since: float) -> None:
    train = [u for u in rundir.read_dag() if u.kind == "train"]
    counts = jobs_per_unit(rundir, since)
    assert {u.id: counts[u.id] for u in train} == dict.fromkeys((u.id for u in train), 1), counts
    assert {r["attempts"] for r in rundir.submissions().values()} == {1}


# --- case 2: requeue by hand, and a job hitting its time limit --------------------------------
def test_scontrol_requeue_resumes_the_same_job_from_its_last_epoch(slurm_study):
    """Fault: an admin (or preemption) requeues a running job with `scontrol requeue`.
    Expect: the same job id runs again, resumes from its last epoch checkpoint, and records
    requeues = 1; the grid completes with one job and one row set per unit."""
    epochs = 8
    grid, run, cluster, since = slurm_study(strategies="[ce]", epochs=epochs)
    rundir = launch(str(grid), cluster="test", cluster_file=cluster, run_dir=run)
    backend = SlurmBackend(load_profile("test", cluster))
    unit = roles(rundir.read_dag())["s1f1"]
    job = str(rundir.submissions()[unit.id]["job_id"])
    wait_mid_training(rundir, unit.id, 2, epochs - 2, 240, explain=job_logs(rundir))
    subprocess.run(["scontrol", "requeue", job], check=True)
    at_requeue = epochs_done(rundir, unit.id)
    wait_until(lambda: "Restarts=1" in scontrol_job(job), 60, "the requeue")
    wait_requeued_to_end(backend, rundir, job, 300, "the requeued job")
    row = assert_grid_done_once(rundir, epochs)[unit.id]
    assert row["requeues"] == 1 and row["job_id"] == job
    assert row["resumed_from_epoch"] >= at_requeue
    _assert_one_job_per_unit(rundir, since)


def test_a_job_hitting_its_time_limit_is_checkpointed_requeued_and_completes(slurm_study):
    """Fault: the unit needs longer than its job's --time (2 min; SLURM signals USR2 90 s
    before the end). Expect: submitit checkpoints and requeues it (same job id) until it is
    done; each run resumes where the last stopped; the runs row counts the requeues."""
    epochs = 100  # more than one run's ~30 s can train on any machine
    grid, run, cluster, since = slurm_study(strategies="[ce]", epochs=epochs)
    rundir = launch(str(grid), cluster="short", cluster_file=cluster, run_dir=run)
    backend = SlurmBackend(load_profile("short", cluster))
    unit = roles(rundir.read_dag())["s1f1"]
    job = str(rundir.submissions()[unit.id]["job_id"])
    wait_requeued_to_end(backend, rundir, job, 1200, "the unit to finish across requeues")
    assert rundir.failure(unit.id) is None, rundir.failure(unit.id)
    row = assert_grid_done_once(rundir, epochs)[unit.id]
    log = "".join(p.read_text() for p in rundir.path.glob(f"arrays/*/{job}_*log.out"))
    assert "this job is timed-out" in log  # submitit's own words on USR2 near --time
    assert row["requeues"] >= 1 and row["job_id"] == job, row
    # USR2 may come before or after the first epoch ends: whatever the timing, the last run
    # resumed from exactly the epochs checkpointed by the runs before it (their records
    # carry an earlier wall clock than its start), and redid none of them.
    epochs_table = rundir.store.read("epochs", {unit.id}).to_pylist()
    assert sorted(e["epoch"] for e in epochs_table) == list(range(1, epochs + 1))
    before_last_run = [e for e in epochs_table if e["finished_at"] < row["started_at"]]
    assert row["resumed_from_epoch"] == len(before_last_run), (row, before_last_run)
    assert [e["epoch"] for e in before_last_run] == list(range(1, len(before_last_run) + 1))
    _assert_one_job_per_unit(rundir, since)


# --- case 3: slurmd killed under running jobs ---------------------------------------------------
def test_slurmd_killed_under_running_jobs_then_restarted_the_grid_completes(slurm_study):
    """Fault: slurmd (the node daemon) is SIGKILLed while a job trains and its dependant waits
    (afterok); restarted ~5 s later. Expect: the job step lives on (slurmstepd is separate),
    the chain finishes or is requeued, and a re-launch completes the grid, each unit once."""
    epochs = 6
    grid, run, cluster, since = slurm_study(strategies='["ce>focal"]', epochs=epochs)
    rundir = launch(str(grid), cluster="test", cluster_file=cluster, run_dir=run)
    backend = SlurmBackend(load_profile("test", cluster))
    unit = roles(rundir.read_dag())
    wait_mid_training(rundir, unit["s1f1"].id, 1, epochs - 2, 240, explain=job_logs(rundir))
    pid = int(SLURMD_PID.read_text().strip())
    try:
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not alive(pid), 10, "slurmd to die")
        before = epochs_done(rundir, unit["s1f1"].id)
        # Training goes on while slurmd is down (an event, not a time: the next epoch ends).
        wait_until(
            lambda: epochs_done(rundir, unit["s1f1"].id) > before,
            120,
            "an epoch to end while slurmd is down",
            explain=job_logs(rundir),
        )
    finally:
        up = subprocess.run(
            ["bash", str(REPO / "scripts" / "local_slurm.sh"), "up"],
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert up.returncode == 0, up.stdout + up.stderr
    job = str(rundir.submissions()[unit["s1f1"].id]["job_id"])
    wait_requeued_to_end(backend, rundir, job, 300, "the jobs after the slurmd restart")
    again = cli(
        "launch", "--grid", grid, "--cluster", "test", "--cluster-file", cluster,
        "--run-dir", run, "--wait", cwd=run.parent, timeout=400,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    runs = assert_grid_done_once(rundir, epochs)
    _assert_jobs_match_the_record(rundir, since)
    attempts = {
        unit[k].name: rundir.submissions()[unit[k].id]["attempts"] for k in ("s1f1", "s2f1")
    }
    requeues = {unit[k].name: runs[unit[k].id]["requeues"] for k in ("s1f1", "s2f1")}
    print(f"after the slurmd kill: attempts {attempts}, requeues {requeues}")


# --- case 4: the orchestrator killed halfway through submitting ---------------------------------
def _killed_launch(when: str, n: int, grid, cluster, run) -> subprocess.CompletedProcess:
    args = ["launch", "--grid", grid, "--cluster", "test", "--cluster-file", cluster]
    return subprocess.run(
        [sys.executable, "-m", "tests.faults.launch_child", when, str(n), *map(str, args),
         "--run-dir", str(run)],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=cli_env(),
    )  # fmt: skip


def test_launcher_killed_halfway_through_submitting_then_relaunch_submits_each_unit_once(
    slurm_study, tmp_path
):
    """Fault: the launch process is SIGKILLed between two `sbatch` calls: the grid's first
    array (both stage-1 units; the data is prepared) was submitted and recorded, the second
    (stage 2) not. Expect: a re-launch submits only the 2 missing units (each after its own
    parent's array task), SLURM holds exactly one job per unit (squeue/sacct), and the grid
    completes once."""
    grid, run, cluster, since = slurm_study(strategies='[ce, "ce>focal"]', folds="[1, 2]", epochs=1)
    killed = _killed_launch("after-record", 1, grid, cluster, run)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    rundir = RunDir(run)
    assert len(rundir.submissions()) == 2

    args = ("launch", "--grid", grid, "--cluster", "test", "--cluster-file", cluster)
    again = cli(*args, "--run-dir", run, "--wait", cwd=tmp_path, timeout=400)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "submitting 2 units" in again.stdout, again.stdout
    assert_grid_done_once(rundir, 1)
    _assert_one_job_per_unit(rundir, since)


def test_launcher_killed_between_sbatch_and_its_record_does_not_duplicate_the_job(
    slurm_study, tmp_path
):
    """Fault: the launch process is SIGKILLed after `sbatch` accepted its 2nd submission (the
    array of both stage-1 units) but before its task ids reached submissions.json. Expect:
    the re-launch finds its tasks (squeue, by the run dir and array key in the --comment) and
    adopts them into the record instead of submitting the units a second time."""
    grid, run, cluster, since = slurm_study(strategies="[ce, focal]", folds="[1]", epochs=1)
    train = [u for u in prepare_run(grid, run)[0].read_dag() if u.kind == "train"]
    rundir = RunDir(run)
    killed = _killed_launch("before-record", 1, grid, cluster, run)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert rundir.submissions() == {}
    orphans = tagged_jobs(run, RETRY)
    assert sorted(u for _, units in orphans.values() for u in units) == sorted(u.id for u in train)
    args = ("launch", "--grid", grid, "--cluster", "test", "--cluster-file", cluster)
    again = cli(*args, "--run-dir", run, cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "a killed launch had submitted without recording" in again.stdout, again.stdout
    assert "submitted 0 units as 0 SLURM arrays/jobs" in again.stdout, again.stdout
    assert {rundir.submissions()[units[0]]["job_id"] for _, units in orphans.values()} == set(
        orphans
    )
    _assert_one_job_per_unit(rundir, since)


# --- case 5: a unit fails inside a job of packed units (units_per_job: 2) -----------------------
def jobs_of(dataset: str, since: float) -> set[str]:
    """The ids of every SLURM job whose name carries `dataset` (this test's own), from the
    controller and the accounting."""
    jobs = set()
    for line in squeue("%i|%j") + sacct(since, "JobID,JobName"):
        job, _, name = line.strip().partition("|")
        if dataset in name:
            jobs.add(job)
    return jobs


def test_packed_units_a_failure_keeps_its_siblings_results_and_relaunch_runs_only_it(
    slurm_study, capsys
):
    """units_per_job: 2 on ce and ce>focal over 2 folds (4 trainings). Fault: fold 2's stage 2
    cannot start (its work dir is a file). Expect: 2 jobs for the 4 units, the stage-2 pack
    afterok on the stage-1 pack; fold 1's stage 2 is done although the job it shared failed;
    after the fix a re-launch submits only the failed unit, and the grid completes with every
    unit done once."""
    grid, run, cluster, since = slurm_study(strategies='[ce, "ce>focal"]', folds="[1, 2]", epochs=1)
    rundir, unit = prepare_run(grid, run)
    broken = rundir.work_dir(unit["s2f2"].id)
    broken.write_text("not a directory")
    launch(str(grid), cluster="packed", cluster_file=cluster, run_dir=run)
    backend = SlurmBackend(load_profile("packed", cluster))
    job = {k: str(rundir.submissions()[unit[k].id]["job_id"]) for k in unit if k != "prepare"}
    assert job["s1f1"] == job["s1f2"] != job["s2f1"] == job["s2f2"], job
    info = scontrol_job(job["s2f1"])
    assert f"Dependency=afterok:{job['s1f1']}" in info and "KillOInInvalidDependent=Yes" in info
    wait_until(
        lambda: slurm_finished(backend, rundir),
        180,
        "the packs",
        interval=1,
        explain=job_logs(rundir),
    )
    states = {row["unit_id"]: row["state"] for row in status_rows(rundir, backend)}
    assert [states[unit[k].id] for k in ("s1f1", "s1f2", "s2f1")] == ["done"] * 3
    assert states[unit["s2f2"].id] == "failed", rundir.failure(unit["s2f2"].id)
    assert backend.states(rundir)[unit["s2f1"].id] == State.FAILED  # the job it shared

    broken.unlink()
    capsys.readouterr()
    launch(str(grid), cluster="packed", cluster_file=cluster, run_dir=run, wait=True)
    assert "submitted 1 units as 1 SLURM arrays/jobs" in capsys.readouterr().out
    runs = assert_grid_done_once(rundir, 1)
    attempts = {k: rundir.submissions()[unit[k].id]["attempts"] for k in job}
    assert attempts == {"s1f1": 1, "s1f2": 1, "s2f1": 1, "s2f2": 2}
    assert runs[unit["s2f1"].id]["job_id"] == job["s2f1"]
    assert len(jobs_of(unit["s1f1"].dataset, since)) == 3  # for 5 unit submissions


# --- case 6: submission limits, a controller that goes away, a first launch killed ----------
@contextlib.contextmanager
def submit_limit(jobs: int):
    """MaxSubmitJobs=`jobs` on this user's association (sacctmgr), in force once the
    controller shows it; the previous value back afterwards, pass or fail."""
    user = getpass.getuser()
    where = ["where", f"name={user}"]
    show = ["sacctmgr", "-n", "-P", "show", "assoc", f"user={user}", "format=MaxSubmit"]
    before = subprocess.run(show, capture_output=True, text=True, check=True).stdout.split()
    previous = before[0] if before and before[0].isdigit() else "-1"

    def in_force(value: str) -> bool:
        argv = ["scontrol", "show", "assoc_mgr", "flags=assoc", f"users={user}"]
        text = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
        shown = re.findall(r"MaxSubmitJobs=(\d*)", text)  # the account's, then the user's
        return value in shown if value != "-1" else bool(shown) and set(shown) == {""}

    subprocess.run(["sacctmgr", "-i", "modify", "user", *where, "set", f"MaxSubmitJobs={jobs}"],
                   check=True, capture_output=True)  # fmt: skip
    try:
        wait_until(lambda: in_force(str(jobs)), 60, f"MaxSubmitJobs={jobs} in the controller")
        yield
    finally:
        subprocess.run(
            ["sacctmgr", "-i", "modify", "user", *where, "set", f"MaxSubmitJobs={previous}"],
            check=True, capture_output=True,
        )  # fmt: skip
        wait_until(lambda: in_force(previous), 60, "the previous MaxSubmitJobs")


def array_tasks_in_sacct(rundir: RunDir, since: float) -> list[str]:
    tag = run_tag(rundir.path) + ":"
    return [
        job
        for job, _, comment in (line.partition("|") for line in sacct(since, "JobID,Comment"))
        if comment.startswith(tag) and "_" in job
    ]


def test_a_grid_larger_than_the_submit_limit_tops_up_until_done(slurm_study, tmp_path):
    """Fault: the user may have 3 jobs in the queue (MaxSubmitJobs=3) and the grid has 16
    units. Expect: launch --wait submits what fits (arrays of at most the room left), says how
    many units wait, tops up as jobs end, and completes: every unit done exactly once (one
    array task each, never failed and re-submitted), sacct showing array tasks."""
    strategies = '[ce, focal, "ce>focal", "focal>ce"]'  # 4 trainings per fold
    grid, run, cluster, since = slurm_study(strategies=strategies, folds="[1, 2, 3, 4]", epochs=1)
    rundir = RunDir(run)
    with submit_limit(3):
        args = ("launch", "--grid", grid, "--cluster", "test", "--cluster-file", cluster)
        done = cli(*args, "--run-dir", run, "--wait", cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\d+ units wait for room \(MaxSubmitJobs=3 of", done.stdout), done.stdout
    assert not re.search(r"\] .* (failed|blocked) ", done.stdout), done.stdout
    train = [u for u in rundir.read_dag() if u.kind == "train"]
    assert len(train) == 16
    assert_grid_done_once(rundir, 1)
    _assert_one_job_per_unit(rundir, since)  # one task and one attempt each: none failed
    assert not list(run.glob("units/*/failed.json"))
    assert array_tasks_in_sacct(rundir, since), "sacct shows no array task of this run"


def test_slurmctld_stopped_mid_submission_the_launch_retries_and_completes(slurm_study, tmp_path):
    """Fault: slurmctld stops right after the first array of a launch was recorded, until the
    launch has found it gone. Expect: the next sbatch (and squeue/sacct while waiting) fail to
    reach it and are retried with backoff; once it is back the launch completes the grid; one
    job per unit."""
    grid, run, cluster, since = slurm_study(strategies='[ce, "ce>focal"]', folds="[1, 2]", epochs=1)
    args = ["launch", "--grid", grid, "--cluster", "test", "--cluster-file", cluster]
    out = tmp_path / "launch.out"
    with open(out, "wb") as sink:
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.launch_child", "stop-controller", "1",
             *map(str, args), "--run-dir", str(run), "--wait"],
            cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, env=cli_env(),
        )  # fmt: skip
    try:
        wait_until(lambda: "stopped slurmctld" in out.read_text(), 120, "the controller to stop")
        wait_until(lambda: "retrying in" in out.read_text(), 180, "the launch to retry")
    finally:
        up = subprocess.run(
            ["bash", str(REPO / "scripts" / "local_slurm.sh"), "up"],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        code = child.wait(600)
    finally:
        if child.poll() is None:
            child.kill()
    text = out.read_text()
    assert code == 0, text
    assert "sbatch: the SLURM controller did not answer" in text and "retrying in" in text, text
    rundir = RunDir(run)
    assert_grid_done_once(rundir, 1)
    _assert_one_job_per_unit(rundir, since)


def test_a_first_launch_killed_mid_submission_then_cancel_cancels_every_job_it_submitted(
    slurm_study, tmp_path
):
    """Fault: the very first launch of a run dir is SIGKILLed after its 2nd sbatch, before
    that array's record (the node is held by someone else's job, so nothing of ours starts).
    Expect: profile.json was written before the first sbatch, so `cancel` asks SLURM (not the
    local backend), and cancels every job the launch submitted, recorded or not."""
    with node_held(tmp_path):
        grid, run, cluster, _ = slurm_study(strategies='[ce, "ce>focal"]', folds="[1, 2]", epochs=1)
        killed = _killed_launch("before-record", 2, grid, cluster, run)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert json.loads((run / "profile.json").read_text())["cluster"] == "test"
        rundir = RunDir(run)
        assert len(rundir.submissions()) == 2  # the stage-1 array; the stage-2 one unrecorded
        submitted = tagged_jobs(run, RETRY)
        assert len(submitted) == 4
        assert {s for s, _ in submitted.values()} == {"PENDING"}
        cancelled = cli("cancel", "--run-dir", run, cwd=tmp_path, timeout=120)
        assert cancelled.returncode == 0, cancelled.stderr
        assert "cancelled 4 units" in cancelled.stdout, cancelled.stdout
        wait_until(
            lambda: {s for s, _ in tagged_jobs(run, RETRY).values()} == {"CANCELLED"},
            60,
            "every job of the killed launch to be cancelled",
        )
