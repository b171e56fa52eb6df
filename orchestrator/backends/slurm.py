"""The slurm backend: one submitit job per unit, stage 2 chained to stage 1 with `afterok`.

A unit whose dependency is in the same submission (or still queued/running from an earlier
launch) is submitted with `--dependency=afterok:<job id>` and `--kill-on-invalid-dep=yes`, so
SLURM starts it only after its parent succeeded and cancels it if the parent failed (without
that flag it would stay pending forever). Each job id is recorded in the run dir right after
its `sbatch`, so a launch killed halfway leaves an exact record and a re-launch submits only
what is missing. `launch` returns once everything is queued unless asked to wait.

Job files live in `RUN_DIR/units/<unit id>/slurm/` (keyed by unit id, never by job id):
`<job id>_submission.sh`, `<job id>_0_log.out`, the pickled call. Profile values reach the
sbatch file only as submitit parameters (submitit quotes them); `setup:` lines are the one
place a profile writes shell, by design (`module load ...`); `env:` is set inside the job's
Python before torch loads. One job per unit, so `array_parallelism` (and `--jobs`) is
accepted and has no effect here: SLURM's own limits pace the queue.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fer_core.errors import FerError
from orchestrator.backends.base import ACTIVE, CANCELLED, Backend
from orchestrator.backends.slurm_jobs import UnitJob, normalise_state, raw_states
from orchestrator.dag import Unit
from orchestrator.progress import Progress, unit_summary
from orchestrator.rundir import RunDir

# A timed-out job is requeued this many times at most (each run resumes from its last epoch,
# so a limit only stops a unit that cannot finish one epoch within time_min); preemptions
# are requeued without limit.
MAX_TIMEOUT_REQUEUES = 3
POLL_FIRST_S, POLL_GROWTH, POLL_MAX_S = 1.0, 1.25, 10.0  # sacct every 10 s at most
UNKNOWN_GRACE_S = 120.0  # a job neither sacct nor squeue knows for this long is lost


def job_name(unit: Unit) -> str:
    """`ckplus/f01/tiny/ce>focal` -> `fer-ckplus_f01_tiny_ce_focal` (safe in any tool)."""
    return "fer-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", unit.name).strip("_")


class SlurmBackend(Backend):
    name = "slurm"

    def __init__(self, profile: dict[str, Any]):
        super().__init__(profile)
        if shutil.which("sbatch") is None:
            raise FerError(
                "--cluster slurm: no sbatch on PATH; run on a SLURM login node, start a "
                "one-node SLURM with scripts/local_slurm.sh up, or use --cluster local"
            )

    # --- submission -------------------------------------------------------------------------
    def job_parameters(self, unit: Unit, dependency: list[str]) -> dict[str, Any]:
        """submitit SlurmExecutor parameters for `unit` (profile values passed as data)."""
        profile = self.profile
        params: dict[str, Any] = {
            "job_name": job_name(unit),
            "nodes": 1,
            "ntasks_per_node": 1,
            "cpus_per_task": int(profile.get("cpus_per_job", 1)),
            "time": int(profile.get("time_min", 60)),
            "stderr_to_stdout": True,
        }
        for key in ("partition", "account", "qos"):
            if profile.get(key):
                params[key] = profile[key]
        if profile.get("mem_gb") is not None:
            params["mem"] = _mem(profile["mem_gb"])
        if profile.get("gpus_per_job"):
            params["gpus_per_node"] = int(profile["gpus_per_job"])
        if profile.get("setup"):
            params["setup"] = list(profile["setup"])
        if dependency:
            params["dependency"] = "afterok:" + ":".join(dependency)
            params["additional_parameters"] = {"kill_on_invalid_dep": "yes"}
        return params

    def job_env(self) -> dict[str, str]:
        """Set inside the job before torch loads: threads = cpus per job, then profile env."""
        cpus = str(int(self.profile.get("cpus_per_job", 1)))
        env = {"OMP_NUM_THREADS": cpus, "MKL_NUM_THREADS": cpus}
        env.update({k: str(v) for k, v in (self.profile.get("env") or {}).items()})
        return env

    def executor(self, rundir: RunDir, unit: Unit, dependency: list[str]) -> Any:
        from submitit import SlurmExecutor

        python = self.profile.get("python") or sys.executable
        executor = SlurmExecutor(
            folder=job_folder(rundir, unit.id),
            max_num_timeout=MAX_TIMEOUT_REQUEUES,
            python=shlex.quote(str(python)),  # submitit puts it in the command line as is
        )
        executor.update_parameters(**self.job_parameters(unit, dependency))
        return executor

    def submit(self, rundir: RunDir, units: list[Unit], wait: bool = False) -> None:
        in_submission = {unit.id for unit in units}
        earlier = self._active_jobs(rundir, units, in_submission)
        job_ids: dict[str, str] = {}
        for unit in units:
            dependency = []
            for dep in unit.deps:
                if dep in in_submission:
                    dependency.append(job_ids[dep])
                elif dep in earlier:
                    dependency.append(earlier[dep])
            executor = self.executor(rundir, unit, dependency)
            try:
                job = executor.submit(UnitJob(self.job_env()), str(rundir.path), unit.id)
            except Exception as exc:  # submitit raises its own error types for sbatch failures
                _remove_unsubmitted(job_folder(rundir, unit.id))
                message = " ".join(str(exc).split())[-400:]
                before = (
                    f"the {len(job_ids)} units before it are queued (recorded in "
                    f"{rundir.path / 'submissions.json'})"
                    if job_ids
                    else "nothing was submitted"
                )
                raise FerError(
                    f"sbatch refused unit {unit.name} ({unit.id}): {message}; {before}; "
                    f"fix the profile (or the cluster) and re-launch"
                ) from exc
            job_ids[unit.id] = str(job.job_id)
            rundir.record_submissions({unit.id: {"backend": self.name, "job_id": job_ids[unit.id]}})
        print(
            f"submitted {len(job_ids)} SLURM jobs ({_id_range(list(job_ids.values()))}); "
            f"follow with: python -m orchestrator status --run-dir {rundir.path}",
            flush=True,
        )
        if wait:
            self.wait(rundir, units)

    def _active_jobs(
        self, rundir: RunDir, units: list[Unit], in_submission: set[str]
    ) -> dict[str, str]:
        """Dependencies outside this submission that are not done: their active job ids.

        A dependency that is neither done, nor active, nor submitted now cannot be waited
        for; refuse before anything is submitted.
        """
        outside = {d for u in units for d in u.deps if d not in in_submission}
        pending = {d for d in outside if not _is_done(rundir, d)}
        if not pending:
            return {}
        states = self.states(rundir)
        records = rundir.submissions()
        active = {d: str(records[d]["job_id"]) for d in pending if states.get(d) in ACTIVE}
        lost = sorted(pending - set(active))
        if lost:
            raise FerError(
                f"{rundir.path}: unit {lost[0]} is needed by this submission but is not done, "
                f"queued or running; re-launch the whole grid"
            )
        return active

    # --- waiting ----------------------------------------------------------------------------
    def wait(self, rundir: RunDir, units: list[Unit]) -> None:
        """Block until every unit's job has finished; one progress line per finished unit."""
        progress = Progress(len(units))
        remaining = {unit.id: unit for unit in units}
        outcome: dict[str, str] = {}
        seen_at: dict[str, float] = {unit.id: time.monotonic() for unit in units}
        interval = POLL_FIRST_S
        while remaining:
            records = rundir.submissions()
            ids = {u: str(records[u]["job_id"]) for u in remaining if u in records}
            since = min((records[u].get("submitted_at", time.time()) for u in ids), default=None)
            raw = raw_states(list(ids.values()), since)
            now = time.monotonic()
            for unit_id in list(remaining):
                state = raw.get(ids.get(unit_id, ""))
                if state is not None:
                    seen_at[unit_id] = now
                    if normalise_state(state) in ACTIVE:
                        continue
                elif now - seen_at[unit_id] < UNKNOWN_GRACE_S:
                    continue
                unit = remaining.pop(unit_id)
                outcome[unit_id] = self._finished(rundir, unit, state)
                detail = (
                    unit_summary(rundir, unit)
                    if outcome[unit_id] == "done"
                    else rundir.failure(unit_id) or _reason(state, outcome[unit_id])
                )
                progress.finished(unit, outcome[unit_id], detail)
            if remaining:
                time.sleep(interval)
                interval = min(interval * POLL_GROWTH, POLL_MAX_S)
        progress.close()

    @staticmethod
    def _finished(rundir: RunDir, unit: Unit, state: str | None) -> str:
        if _is_done(rundir, unit.id):
            return "done"
        cancelled = state is not None and normalise_state(state) == CANCELLED
        if cancelled and any(not _is_done(rundir, dep) for dep in unit.deps):
            return "blocked"  # kill-on-invalid-dep: its parent failed or was cancelled
        return "failed"

    # --- state and cancel -------------------------------------------------------------------
    def _jobs(self, rundir: RunDir) -> dict[str, dict[str, Any]]:
        return {
            unit_id: record
            for unit_id, record in rundir.submissions().items()
            if record.get("backend") == self.name and record.get("job_id")
        }

    def states(self, rundir: RunDir) -> dict[str, str]:
        jobs = self._jobs(rundir)
        if not jobs:
            return {}
        since = min(record.get("submitted_at", time.time()) for record in jobs.values())
        raw = raw_states([str(r["job_id"]) for r in jobs.values()], since)
        return {
            unit_id: normalise_state(raw[str(record["job_id"])])
            for unit_id, record in jobs.items()
            if str(record["job_id"]) in raw
        }

    def cancel(self, rundir: RunDir) -> list[str]:
        jobs = self._jobs(rundir)
        active = sorted(unit for unit, state in self.states(rundir).items() if state in ACTIVE)
        if not active:
            return []
        argv = ["scancel", *(str(jobs[unit]["job_id"]) for unit in active)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            # scancel also fails when a job ended between the query and the call: re-check.
            still = [u for u, s in self.states(rundir).items() if u in active and s in ACTIVE]
            if still:
                raise FerError(f"scancel failed for {rundir.path}: {done.stderr.strip()}")
        return active


def _is_done(rundir: RunDir, unit_id: str) -> bool:
    try:
        kind = rundir.read_spec(unit_id)["kind"]
    except FerError:
        return False
    return rundir.store.is_done(unit_id, kind)


def _remove_unsubmitted(folder: Path) -> None:
    """submitit's files for a submission sbatch refused: its temp script and pickled call."""
    for path in [*folder.glob(".submission_file_*.sh"), *folder.glob("*.pkl")]:
        if re.fullmatch(r"(\.submission_file_)?[0-9a-f]{32}(\.sh|\.pkl)", path.name):
            path.unlink(missing_ok=True)


def _mem(mem_gb: float) -> str:
    """32 -> "32GB", 1.5 -> "1536MB" (as submitit's own conversion)."""
    return f"{int(mem_gb)}GB" if mem_gb == int(mem_gb) else f"{int(mem_gb * 1024)}MB"


def _reason(state: str | None, outcome: str) -> str:
    if outcome == "blocked":
        return "a dependency failed (job cancelled by SLURM)"
    if state is None:
        return "the job disappeared from squeue and sacct"
    return f"SLURM state {state}"


def _id_range(ids: list[str]) -> str:
    if not ids:
        return "none"
    return f"job {ids[0]}" if len(ids) == 1 else f"jobs {ids[0]}..{ids[-1]}"


def job_folder(rundir: RunDir, unit_id: str) -> Path:
    """A unit's submitit folder: submission scripts, logs, the pickled call."""
    return rundir.unit_dir(unit_id) / "slurm"


def submission_text(executor: Any) -> str:
    """The sbatch file `executor` would write, without submitting (golden-file test)."""
    # submitit has no public preview; these are the two calls its _submit_command makes.
    return executor._make_submission_file_text(executor._submitit_command_str, "preview")
