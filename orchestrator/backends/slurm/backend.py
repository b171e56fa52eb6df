"""The slurm backend: units as submitit jobs, stage 2 chained to stage 1 with `afterok`.

One job per unit, or with `units_per_job: k` up to k units that can start together in one
job, run as k parallel worker processes (`slurm_pack` says which units share a job). A job
whose dependency is in the same submission (or still queued/running from an earlier launch)
is submitted with `--dependency=afterok:<job ids>` and `--kill-on-invalid-dep=yes`, so SLURM
starts it only after its parents succeeded and cancels it if one failed (without that flag
it would stay pending forever). `launch` returns once everything is queued unless asked to
wait.

Each job id is recorded in the run dir right after its `sbatch`, so a launch killed between
two sbatch calls leaves an exact record. Killed between an sbatch and its record, it leaves a
job only SLURM knows of: every job carries `--comment=fer:<run dir hash>:<unit ids>`, and
the next launch adopts such a job from `squeue` (records it, waits on it, makes dependants
depend on it) instead of submitting its units again; `cancel` finds it the same way.

Job files are keyed by unit ids, never by job id: a single unit's in
`RUN_DIR/units/<unit id>/slurm/` (`<job id>_submission.sh`, `<job id>_0_log.out`, the
pickled call), a pack's in `RUN_DIR/packs/<hash of its unit ids>/`, with each unit's worker
log in its own folder (`<job id>_pack_log.out`). Profile values reach the sbatch file only
as submitit parameters (submitit quotes them); `setup:` lines are the one place a profile
writes shell, by design (`module load ...`); `env:` is set inside the job's Python before
torch loads. `array_parallelism` (and `--jobs`) is accepted and has no effect here: SLURM's
own limits pace the queue.
"""

from __future__ import annotations

import hashlib
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
from orchestrator.backends.slurm.jobs import (
    PackJob,
    UnitJob,
    job_comment,
    normalise_state,
    raw_states,
    unrecorded_jobs,
)
from orchestrator.backends.slurm.pack import Pack, plan_packs
from orchestrator.plan.dag import Unit
from orchestrator.run.progress import Progress, unit_summary
from orchestrator.run.rundir import RunDir

# A timed-out job is requeued this many times at most (each run resumes from its last epoch,
# so a limit only stops a unit that cannot finish one epoch within time_min); preemptions
# are requeued without limit.
MAX_TIMEOUT_REQUEUES = 3
POLL_FIRST_S, POLL_GROWTH, POLL_MAX_S = 1.0, 1.25, 10.0  # sacct every 10 s at most
UNKNOWN_GRACE_S = 120.0  # a job neither sacct nor squeue knows for this long is lost


def job_name(unit: Unit) -> str:
    """`ckplus/f01/tiny/ce>focal` -> `fer-ckplus_f01_tiny_ce_focal` (safe in any tool)."""
    return "fer-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", unit.name).strip("_")


def pack_job_name(units: list[Unit]) -> str:
    """A pack of 2 starting with `ckplus/f01/tiny/ce` -> `fer-pack2-ckplus_f01_tiny_ce`."""
    return f"fer-pack{len(units)}-" + job_name(units[0]).removeprefix("fer-")


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
    def job_parameters(
        self, rundir: RunDir, units: list[Unit], dependency: list[str]
    ) -> dict[str, Any]:
        """submitit SlurmExecutor parameters for a job of `units` (profile values as data)."""
        profile = self.profile
        params: dict[str, Any] = {
            "job_name": job_name(units[0]) if len(units) == 1 else pack_job_name(units),
            "comment": job_comment(rundir.path, [unit.id for unit in units]),
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

    def job_env(self, units: int = 1) -> dict[str, str]:
        """Set before torch loads: threads = each unit's share of the job's CPUs, then the
        profile's env."""
        threads = str(max(1, int(self.profile.get("cpus_per_job", 1)) // units))
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        env.update({k: str(v) for k, v in (self.profile.get("env") or {}).items()})
        return env

    def executor(self, rundir: RunDir, unit: Unit, dependency: list[str]) -> Any:
        """The submitit executor of a job of `unit` alone."""
        return self._executor(rundir, [unit], dependency, job_folder(rundir, unit.id))

    def pack_executor(self, rundir: RunDir, units: list[Unit], dependency: list[str]) -> Any:
        """The submitit executor of a job of the pack `units`."""
        return self._executor(rundir, units, dependency, pack_folder(rundir, units))

    def _executor(
        self, rundir: RunDir, units: list[Unit], dependency: list[str], folder: Path
    ) -> Any:
        from submitit import SlurmExecutor

        python = self.profile.get("python") or sys.executable
        executor = SlurmExecutor(
            folder=folder,
            max_num_timeout=MAX_TIMEOUT_REQUEUES,
            python=shlex.quote(str(python)),  # submitit puts it in the command line as is
        )
        executor.update_parameters(**self.job_parameters(rundir, units, dependency))
        return executor

    def submit(self, rundir: RunDir, units: list[Unit], wait: bool = False) -> None:
        earlier = self._active_jobs(rundir, units, {unit.id for unit in units})
        adopted = self._adopt_unrecorded(rundir, units)
        todo = [u for u in units if u.id not in adopted and not _is_done(rundir, u.id)]
        per_job = int(self.profile.get("units_per_job", 1))
        packs = plan_packs(todo, per_job, {**earlier, **adopted})
        job_ids: list[str] = []
        for pack in packs:
            dependency = [job_ids[i] for i in pack.parents] + list(pack.external)
            queued = sum(len(p.units) for p in packs[: len(job_ids)])
            job_ids.append(self._sbatch(rundir, pack, dependency, queued))
            record: dict[str, Any] = {"backend": self.name, "job_id": job_ids[-1]}
            if len(pack.units) > 1:
                record["pack"] = [unit.id for unit in pack.units]
            rundir.record_submissions({unit.id: record for unit in pack.units})
        print(
            f"submitted {len(job_ids)} SLURM jobs for {len(todo)} units "
            f"({_id_range(job_ids)}); follow with: python -m orchestrator status "
            f"--run-dir {rundir.path}",
            flush=True,
        )
        if wait:
            self.wait(rundir, units)

    def _sbatch(self, rundir: RunDir, pack: Pack, dependency: list[str], queued: int) -> str:
        """Submit the job of `pack`; its job id. A refusal says what is queued already."""
        units = list(pack.units)
        if len(units) == 1:
            executor = self.executor(rundir, units[0], dependency)
            call = (UnitJob(self.job_env()), str(rundir.path), units[0].id)
        else:
            executor = self.pack_executor(rundir, units, dependency)
            call = (PackJob(self.job_env(len(units))), str(rundir.path), [u.id for u in units])
        try:
            job = executor.submit(*call)
        except Exception as exc:  # submitit raises its own error types for sbatch failures
            _remove_unsubmitted(Path(executor.folder))
            message = " ".join(str(exc).split())[-400:]
            what = (
                f"unit {units[0].name} ({units[0].id})"
                if len(units) == 1
                else f"a job of {len(units)} units ({', '.join(u.name for u in units)})"
            )
            before = (
                f"the {queued} units before it are queued (recorded in "
                f"{rundir.path / 'submissions.json'})"
                if queued
                else "nothing was submitted"
            )
            raise FerError(
                f"sbatch refused {what}: {message}; {before}; "
                f"fix the profile (or the cluster) and re-launch"
            ) from exc
        return str(job.job_id)

    def _adopt_unrecorded(self, rundir: RunDir, units: list[Unit]) -> dict[str, str]:
        """Record the jobs of `units` that sbatch accepted but no record holds (a launch was
        killed in between); unit id -> job id of those still queued or running, which are
        not submitted again.

        One that ended is recorded as the attempt it was, and its units are submitted again
        unless done: a failed or cancelled job's unit is retried, a completed one's is in
        the store.
        """
        found = self._unrecorded(rundir, {unit.id for unit in units})
        by_job: dict[str, list[str]] = {}
        for unit_id, (job, _, _) in found.items():
            by_job.setdefault(job, []).append(unit_id)
        adopted: dict[str, str] = {}
        for job, unit_ids in by_job.items():
            _, state, job_units = found[unit_ids[0]]
            record: dict[str, Any] = {"backend": self.name, "job_id": job}
            if len(job_units) > 1:
                record["pack"] = job_units
            rundir.record_submissions(dict.fromkeys(unit_ids, record))
            if normalise_state(state) in ACTIVE:
                adopted.update(dict.fromkeys(unit_ids, job))
        if by_job:
            print(
                f"recorded {len(by_job)} SLURM jobs that a killed launch had submitted without "
                f"recording ({_id_range(sorted(by_job, key=int))}); "
                f"{len(set(adopted.values()))} still queued or running: not submitted again",
                flush=True,
            )
        return adopted

    def _unrecorded(
        self, rundir: RunDir, wanted: set[str] | None = None
    ) -> dict[str, tuple[str, str, list[str]]]:
        recorded = {unit: str(record["job_id"]) for unit, record in self._jobs(rundir).items()}
        return unrecorded_jobs(rundir.path, recorded, wanted)

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
        by_id = {unit.id: unit for unit in units}
        remaining = dict(by_id)
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
                job_units = [by_id.get(u, unit) for u in records.get(unit_id, {}).get("pack", [])]
                outcome[unit_id] = self._finished(rundir, unit, state, job_units or [unit])
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
    def _finished(rundir: RunDir, unit: Unit, state: str | None, job_units: list[Unit]) -> str:
        """done, blocked or failed: `unit`'s job (shared by `job_units`) has ended."""
        if _is_done(rundir, unit.id):
            return "done"
        cancelled = state is not None and normalise_state(state) == CANCELLED
        deps = {dep for member in job_units for dep in member.deps}
        if cancelled and any(not _is_done(rundir, dep) for dep in deps):
            # kill-on-invalid-dep: a parent of the job (of this unit, or of a unit packed
            # with it) failed or was cancelled
            return "blocked"
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
        """Cancel this run dir's active jobs: the recorded ones, and those a killed launch
        submitted without recording (found by their comment)."""
        jobs = self._jobs(rundir)
        targets = {
            unit: str(jobs[unit]["job_id"])
            for unit, state in self.states(rundir).items()
            if state in ACTIVE
        }
        orphans = {
            (unit, job)
            for unit, (job, state, _) in self._unrecorded(rundir).items()
            if normalise_state(state) in ACTIVE
        }
        active = sorted(set(targets) | {unit for unit, _ in orphans})
        if not active:
            return []
        job_ids = set(targets.values()) | {job for _, job in orphans}
        argv = ["scancel", *sorted(job_ids, key=int)]
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


def pack_folder(rundir: RunDir, units: list[Unit]) -> Path:
    """A pack's submitit folder, keyed by its units (the same pack re-submitted reuses it)."""
    key = hashlib.sha256(",".join(sorted(unit.id for unit in units)).encode()).hexdigest()
    return rundir.path / "packs" / key[:16]


def submission_text(executor: Any) -> str:
    """The sbatch file `executor` would write, without submitting (golden-file test)."""
    # submitit has no public preview; these are the two calls its _submit_command makes.
    return executor._make_submission_file_text(executor._submitit_command_str, "preview")
