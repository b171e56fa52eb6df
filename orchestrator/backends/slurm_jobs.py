"""The SLURM side of the slurm backend: what a job runs, and what SLURM says about jobs.

`UnitJob` is the callable submitit pickles into each job. It is checkpointable: on a
timeout or preemption signal submitit calls `checkpoint()` and requeues the same job id,
and the requeued run trains on from the unit's `work/last.pt` (the trainer resumes from it
by itself). This module imports nothing heavy: a job unpickles it before torch is loaded,
so the environment it sets (thread counts, profile `env:`) is in place when torch starts.

`raw_states(job_ids)` asks `squeue` (the controller) and, for the jobs it no longer holds,
`sacct` (the accounting record), both as argv lists; never submitit's `job.state`, which
hangs without accounting.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

from submitit.helpers import Checkpointable

# SLURM job state (first word: "CANCELLED by 0" -> CANCELLED) -> backend state name.
STATE_MAP = {
    "PENDING": "pending",
    "CONFIGURING": "pending",
    "REQUEUED": "pending",
    "REQUEUE_FED": "pending",
    "REQUEUE_HOLD": "pending",
    "RESIZING": "pending",
    "SUSPENDED": "pending",
    "STOPPED": "pending",
    "RUNNING": "running",
    "COMPLETING": "running",
    "SIGNALING": "running",
    "STAGE_OUT": "running",
    "FAILED": "failed",
    "TIMEOUT": "failed",
    "OUT_OF_MEMORY": "failed",
    "NODE_FAIL": "failed",
    "BOOT_FAIL": "failed",
    "SPECIAL_EXIT": "failed",
    "CANCELLED": "cancelled",
    "DEADLINE": "cancelled",
    "PREEMPTED": "cancelled",  # a preempted job that was requeued shows REQUEUED/PENDING
    "REVOKED": "cancelled",
    "COMPLETED": "completed",
}
QUERY_TIMEOUT_S = 60


class UnitJob(Checkpointable):
    """Runs one unit of a run dir inside a SLURM job; requeued (not restarted) on preemption."""

    def __init__(self, env: dict[str, str] | None = None):
        self.env = dict(env or {})

    def __call__(self, run_dir: str, unit_id: str) -> str:
        # submitit ignores SIGTERM, so `scancel` would leave training running until SIGKILL
        # (KillWait, often 30 s) while SLURM already reports the job cancelled. Stop at once:
        # the unit resumes from its last epoch either way. Time limits and preemption notices
        # still arrive as USR2 first (submitit's checkpoint-and-requeue handler).
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.environ.update(self.env)
        from orchestrator.worker import run

        return run(run_dir, unit_id)

    def checkpoint(self, run_dir: str, unit_id: str) -> Any:
        # Nothing to save here: the trainer writes work/last.pt after every epoch, and the
        # requeued job's worker resumes from it. Resubmit the same call.
        return super().checkpoint(run_dir, unit_id)


def normalise_state(raw: str) -> str:
    """`CANCELLED by 0`, `CANCELLED+` -> `cancelled`; unknown states count as pending."""
    word = raw.split()[0].rstrip("+") if raw.strip() else "PENDING"
    return STATE_MAP.get(word, "pending")


def _query(argv: list[str]) -> dict[str, str]:
    """`JOBID|STATE` lines of a sacct/squeue call -> {job id: raw state}; {} when it fails."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if done.returncode != 0:  # squeue: all ids unknown; sacct: no accounting storage
        return {}
    states = {}
    for line in done.stdout.splitlines():
        job_id, sep, state = line.strip().partition("|")
        if sep and job_id:
            states[job_id] = state.strip()
    return states


def raw_states(job_ids: list[str], since: float | None = None) -> dict[str, str]:
    """job id -> raw SLURM state for `job_ids` (those neither squeue nor sacct knows are left out).

    The controller (`squeue`) first: it is ahead of accounting, and only it shows a cancelled
    job as COMPLETING while its processes are still being killed (sacct already says
    CANCELLED), which keeps a re-launch from starting a second worker on the same work dir.
    `sacct` for the jobs the controller has forgotten (MinJobAge after they ended); `since`
    (epoch seconds, the earliest submission) bounds its time window, which otherwise starts
    at midnight and would miss a launch of an earlier day.
    """
    if not job_ids:
        return {}
    squeue = ["squeue", "-h", "-t", "all", "-o", "%i|%T", "-j", ",".join(job_ids)]
    states = {k: v for k, v in _query(squeue).items() if k in job_ids}
    missing = [j for j in job_ids if j not in states]
    if missing:
        sacct = ["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(missing)]
        if since is not None:
            start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since - 86400))
            sacct += ["-S", start]
        states.update({k: v for k, v in _query(sacct).items() if k in missing})
    return states
