"""The one-node SLURM from scripts/local_slurm.sh, driven with the real client tools.

These tests check the cluster itself (the things the SLURM backend relies on), not our code:
a job runs and `sacct` reports it, a failed job's `afterok` dependant is cancelled rather than
left pending, and two one-CPU jobs share the node. Start the cluster first
(`sudo scripts/local_slurm.sh up`) and set FER_TEST_SLURM=1 (tests.helpers.slurm_gate).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.helpers import scontrol_job, wait_until

pytestmark = pytest.mark.slurm  # run only where tests.helpers.slurm_gate allows

JOB_TIMEOUT_S = 45.0  # a one-second job; generous for a loaded CI box
POLL_S = 0.25
TERMINAL = (
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
)
# Only this session's jobs: a state dir rebuilt from scratch restarts job ids at 1, and
# slurmdbd may still hold older jobs with the same ids.
SINCE = (datetime.now() - timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%S")


def run(*argv: str, timeout: float = 20.0) -> str:
    """Run a SLURM client command (argv, no shell) and return its stdout."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


@pytest.fixture(scope="module", autouse=True)
def cluster_is_up() -> None:
    """Fail (not skip) with the fix when sbatch exists but no controller answers."""
    try:
        out = run("scontrol", "ping", timeout=10)
    except (AssertionError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"no SLURM controller answers ({exc}); run: sudo scripts/local_slurm.sh up")
    assert "UP" in out, f"scontrol ping: {out.strip()}; run: sudo scripts/local_slurm.sh up"


@pytest.fixture
def submit(tmp_path: Path) -> Iterator:
    """sbatch --wrap a command; returns the job id. Cancels leftovers at teardown."""
    jobs: list[str] = []

    def _submit(command: str, *options: str, name: str = "fer-test") -> str:
        out = run(
            "sbatch",
            "--parsable",
            f"--job-name={name}",
            f"--chdir={tmp_path}",
            f"--output={tmp_path}/%j.out",
            "--ntasks=1",
            "--cpus-per-task=1",
            "--time=00:02:00",
            *options,
            f"--wrap={command}",
        )
        job_id = out.strip().split(";")[0]  # "id" or "id;cluster"
        assert job_id.isdigit(), f"sbatch printed {out!r}"
        jobs.append(job_id)
        return job_id

    yield _submit
    subprocess.run(["scancel", *jobs], capture_output=True, timeout=20, check=False)


def sacct(job_id: str) -> dict[str, str]:
    """The allocation's accounting record (State, ExitCode, Start), {} if none yet."""
    out = run(
        "sacct", "-n", "-X", "-P", "-j", job_id, "-S", SINCE, "--format=JobID,State,ExitCode,Start"
    )
    rows = [line.split("|") for line in out.splitlines() if line.startswith(f"{job_id}|")]
    if not rows:
        return {}
    _, state, exit_code, start = rows[-1]
    return {"State": state, "ExitCode": exit_code, "Start": start}


def wait_for_end(job_id: str, timeout: float = JOB_TIMEOUT_S) -> dict[str, str]:
    """Poll sacct until the job reaches a terminal state; bounded, never hangs."""

    def ended() -> dict[str, str]:
        record = sacct(job_id)
        return record if record.get("State", "").startswith(TERMINAL) else {}

    return wait_until(
        ended,
        timeout,
        f"job {job_id} to end",
        interval=POLL_S,
        explain=lambda: f"; sacct: {sacct(job_id)}; scontrol: {scontrol_job(job_id).strip()}",
    )


def job_fields(job_id: str) -> dict[str, str]:
    """`scontrol show job -o` as a dict (values up to the next space)."""
    out = run("scontrol", "show", "job", "-o", job_id)
    return dict(re.findall(r"(\w+)=(\S*)", out))


def test_a_job_runs_and_sacct_reports_it_completed(submit, tmp_path):
    job = submit("echo hello-from-slurm")
    record = wait_for_end(job)
    assert record["State"] == "COMPLETED", record
    assert record["ExitCode"] == "0:0", record
    assert (tmp_path / f"{job}.out").read_text().strip() == "hello-from-slurm"


def test_afterok_on_a_failed_job_cancels_the_dependant(submit, tmp_path):
    # Held, so the dependency is still pending when we look at it.
    first = submit("sleep 1; exit 3", "--hold", name="fer-test-fails")
    second = submit(
        "echo must-not-run",
        f"--dependency=afterok:{first}",
        "--kill-on-invalid-dep=yes",
        name="fer-test-dependant",
    )
    pending = job_fields(second)
    assert pending["JobState"] == "PENDING", pending
    assert pending["Reason"] == "Dependency", pending
    assert pending["Dependency"].startswith(f"afterok:{first}"), pending

    run("scontrol", "release", first)
    failed = wait_for_end(first)
    assert failed["State"] == "FAILED", failed
    assert failed["ExitCode"] == "3:0", failed

    cancelled = wait_for_end(second)
    assert cancelled["State"].startswith("CANCELLED"), cancelled
    # sacct may stamp Start with the cancel time of a job that never ran; what shows that it
    # never ran is that its batch script never wrote its output file.
    assert not (tmp_path / f"{second}.out").exists(), f"dependant started: {cancelled}"


def test_two_one_cpu_jobs_run_at_once(submit, tmp_path):
    name, cpus, usage = run("sinfo", "-h", "-N", "-o", "%N %c %C").split()
    idle = int(usage.split("/")[1])  # %C is allocated/idle/other/total
    if int(cpus) < 2:
        pytest.skip(f"node {name} has {cpus} CPU; needs 2 to share")
    if idle < 2:
        pytest.skip(f"node {name} busy (CPUs allocated/idle/other/total: {usage})")
    # Each job marks that it runs, then waits (60 s at most) for the other's mark: both
    # complete only if they ran at the same time, however slowly either started.
    barrier = (
        "touch {mine}; for i in $(seq 600); do [ -e {other} ] && exit 0; sleep 0.1; done; exit 1"
    )
    marks = [tmp_path / "share0.running", tmp_path / "share1.running"]
    jobs = [
        submit(barrier.format(mine=marks[i], other=marks[1 - i]), name=f"fer-test-share{i}")
        for i in range(2)
    ]
    for job in jobs:
        assert wait_for_end(job)["State"] == "COMPLETED"
