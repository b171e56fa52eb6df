"""The slurm backend: units as submitit job arrays, stage 2 chained to stage 1 per task.

One array task per unit, or with `units_per_job: k` per pack of up to k units that can start
together, run as k parallel worker processes (`pack.py` says which units share a task). The
tasks of one wave go to SLURM as few job arrays as their dependencies allow (`arrays.py`): a
task waits on its own parent's task (`afterok:<array>_<index>`, or `aftercorr:<array>` for a
whole array of children), with `--kill-on-invalid-dep=yes`, so SLURM starts it only after its
parent succeeded and cancels it if the parent failed. `array_parallelism` (and `--jobs`) is
the `%N` throttle: tasks of one array running at once.

Limits: `launch` reads the cluster's (`control.read_limits`: MaxArraySize, and the
MaxSubmitJobs of the user's association and QOS when enforced), submits what fits (each array
task counts as one job) and says how many units wait; `--wait` tops up as jobs end, and
without it a later `launch` submits the next batch. An sbatch refused for a limit leaves its
units waiting, never failed. sbatch/squeue/sacct/scancel calls that cannot reach the
controller are retried with backoff (`control.py`).

Records first: before each sbatch its tasks' units are written to
`RUN_DIR/arrays/<key>/tasks.json` and the job carries `--comment=fer:<run dir hash>:<key>`;
right after it, every task's job id (`<array>_<index>`, or the job id of a one-task
submission) is recorded in submissions.json. A launch killed in between leaves a job only
SLURM knows of: the next launch adopts its tasks from `squeue` (records them, waits on them,
makes dependants depend on them) instead of submitting their units again, and `cancel` finds
it the same way. Before a transient sbatch failure is retried, the same check runs, so a job
the controller accepted without answering is not submitted twice.

An array's submitit files (submission script, pickled calls, `<array>_<index>_0_log.out`)
are in `RUN_DIR/arrays/<key>/`; a packed unit's worker log in
`units/<id>/slurm/<job id>_pack_log.out`. Profile values reach the sbatch file only as
submitit parameters (submitit quotes them); `setup:` lines are the one place a profile writes
shell, by design (`module load ...`); `env:` is set inside the job's Python before torch
loads.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from fer_core.errors import FerError
from fer_core.io import atomic_write_text
from fer_core.ranks import COLLECTIVE_TIMEOUT, NODES
from orchestrator.backends.base import Backend
from orchestrator.backends.slurm.accounting import record_accounting
from orchestrator.backends.slurm.arrays import Array, dependency_of, plan_arrays
from orchestrator.backends.slurm.control import (
    LIMIT_REFUSAL,
    Limits,
    Retry,
    TransientError,
    clean_env,
    is_transient,
    queued_jobs,
    read_limits,
    retrying,
    slurm_call,
)
from orchestrator.backends.slurm.jobs import (
    RUN_START,
    PackJob,
    UnitJob,
    job_comment,
    job_key,
    normalise_state,
    raw_states,
    submitted_as,
    unrecorded_jobs,
)
from orchestrator.backends.slurm.pack import Pack, plan_packs
from orchestrator.backends.slurm.ranks import job_ranks
from orchestrator.plan.profiles import JobResources, SlurmProfile, UnitRanks
from orchestrator.plan.unit import Unit
from orchestrator.run.progress import Progress, unit_summary
from orchestrator.run.rundir import RunDir, Submission
from orchestrator.run.states import ACTIVE, State

POLL_FIRST_S, POLL_GROWTH, POLL_MAX_S = 1.0, 1.25, 10.0  # sacct every 10 s at most
UNKNOWN_GRACE_S = 120.0  # a job neither sacct nor squeue knows for this long is lost


def job_name(unit: Unit) -> str:
    """`ckplus/f01/tiny/ce>focal` -> `fer-ckplus_f01_tiny_ce_focal` (safe in any tool)."""
    return "fer-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", unit.name).strip("_")


def array_job_name(tasks: list[tuple[Unit, ...]]) -> str:
    """One unit: its job_name; one pack of 2: `fer-pack2-<first unit>`; an array of 8 tasks:
    `fer-array8-<first unit>`."""
    first = job_name(tasks[0][0])
    if len(tasks) > 1:
        return f"fer-array{len(tasks)}-" + first.removeprefix("fer-")
    if len(tasks[0]) > 1:
        return f"fer-pack{len(tasks[0])}-" + first.removeprefix("fer-")
    return first


def job_parameters(
    profile: SlurmProfile,
    rundir: RunDir,
    tasks: list[tuple[Unit, ...]],
    dependency: str,
    key: str,
) -> dict[str, Any]:
    """submitit SlurmExecutor parameters of an array of `tasks` (profile values as data; the
    resources of the tasks' unit kind and backbone, which every task of an array shares)."""
    need = profile.resources_for([unit for units in tasks for unit in units])
    ranks = job_ranks(profile, tasks)
    params: dict[str, Any] = {
        "job_name": array_job_name(tasks),
        "comment": job_comment(rundir.path, key),
        "nodes": ranks.nodes,
        "ntasks_per_node": ranks.per_node,
        "cpus_per_task": need.cpus,  # per task: each rank has the unit's CPUs
        "time": need.time_min,
        "stderr_to_stdout": True,
        # no throttle: submitit writes one anyway (`%N`), so N is every task of the array
        "array_parallelism": profile.array_parallelism or len(tasks),
    }
    for name, value in (
        ("partition", profile.partition),
        ("account", profile.account),
        ("qos", profile.qos),
    ):
        if value:
            params[name] = value
    if need.mem_gb is not None:
        params["mem"] = _mem(need.mem_gb)
    if need.gpus:
        params["gpus_per_node"] = need.gpus
    if profile.setup:
        params["setup"] = list(profile.setup)
    extra: dict[str, str] = dict(profile.extra_sbatch)  # checked: none of the tool's own
    if dependency:
        params["dependency"] = dependency
        extra["kill_on_invalid_dep"] = "yes"
    if extra:
        params["additional_parameters"] = extra
    if ranks.world > 1:
        # A rank that exits non-zero or dies ends the whole step (and the job): its peers
        # would otherwise wait in a collective until the collective timeout.
        params["srun_args"] = ["--kill-on-bad-exit=1"]
    return params


class LimitReached(Exception):
    """sbatch refused an array for a submission limit: its units wait for room."""


class SlurmBackend(Backend[SlurmProfile]):
    name = "slurm"

    def __init__(self, profile: SlurmProfile):
        super().__init__(profile)
        if shutil.which("sbatch") is None:
            raise FerError(
                "--cluster slurm: no sbatch on PATH; run on a SLURM login node, start a "
                "one-node SLURM with scripts/local_slurm.sh up, or use --cluster local"
            )
        self.retry = Retry.of(profile)

    # --- submission -------------------------------------------------------------------------
    def job_env(self, units: tuple[Unit, ...]) -> dict[str, str]:
        """Set before torch loads: threads = each unit's share of the job's CPUs (each rank's
        CPUs), then for a multi-rank unit its node count and collective timeout, then the
        profile's env."""
        cpus = self.profile.resources_for(units).cpus
        threads = str(max(1, cpus // len(units)))
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        ranks = job_ranks(self.profile, [units])
        if ranks.world > 1:
            env[NODES] = str(ranks.nodes)
            env[COLLECTIVE_TIMEOUT] = str(self.profile.collective_timeout_s)
        return {**env, **self.profile.env}

    def executor(
        self, rundir: RunDir, tasks: list[tuple[Unit, ...]], dependency: str, key: str
    ) -> Any:
        """The submitit executor of an array of `tasks` (files in `RUN_DIR/arrays/<key>/`)."""
        from submitit import SlurmExecutor

        executor = SlurmExecutor(
            folder=rundir.array_dir(key),
            max_num_timeout=self.profile.timeout_requeues,
            python=self.profile.python_command(),  # submitit puts it in the command as is
        )
        executor.update_parameters(**job_parameters(self.profile, rundir, tasks, dependency, key))
        return executor

    def submit(self, rundir: RunDir, units: list[Unit], wait: bool = False) -> None:
        waiting = self._submit_what_fits(rundir, units)
        if wait:
            self.wait(rundir, units, waiting)
        elif waiting:
            print(
                f"{len(waiting)} units wait for room under the cluster's limits; "
                f"`launch` again submits the next batch (or `launch --wait` tops up as jobs end)",
                flush=True,
            )

    def _submit_what_fits(
        self, rundir: RunDir, units: list[Unit], topping_up: bool = False
    ) -> list[Unit]:
        """Submit `units` (topological order) as arrays, as many as the cluster's limits
        allow; the units left waiting for room.

        A dependency that is neither done nor active is refused before anything is
        submitted; while topping up it is a parent whose end `wait` has not seen yet, and
        its dependants wait for that.
        """
        earlier, lost = self._active_jobs(rundir, units, {unit.id for unit in units})
        if lost and not topping_up:
            raise FerError(
                f"{rundir.path}: unit {sorted(lost)[0]} is needed by this submission but is "
                f"not done, queued or running; re-launch the whole grid"
            )
        held = set(lost)
        for unit in units:  # topological: a dependant of a held unit is held too
            if any(dep in held for dep in unit.deps):
                held.add(unit.id)
        adopted = self._adopt_unrecorded(rundir, units)
        todo = [
            u
            for u in units
            if u.id not in adopted and u.id not in held and not rundir.is_done(u.id)
        ]
        packs = plan_packs(todo, self.profile.units_per_job, {**earlier, **adopted})
        limits = read_limits(self.profile, self.retry)
        queued = queued_jobs(self.retry) if limits.max_submit is not None else 0
        room = limits.room(queued)
        fitting = packs if room is None else packs[:room]  # a prefix: parents come first
        arrays = plan_arrays(fitting, limits.max_array_size, self._resource_class)
        ids: list[str] = []
        for index, array in enumerate(arrays):
            try:
                ids.append(self._sbatch(rundir, array, dependency_of(array, arrays, ids)))
            except LimitReached as exc:
                # The limits read were not the whole story (another association, another
                # user's jobs in an account limit...): try the first half, and stop there.
                print(f"sbatch refused for a limit ({exc}): the rest waits", flush=True)
                while len(array.packs) > 1:
                    array = replace(array, packs=array.packs[: len(array.packs) // 2])
                    arrays[index] = array
                    with contextlib.suppress(LimitReached):
                        ids.append(self._sbatch(rundir, array, dependency_of(array, arrays, ids)))
                        break
                break
        sent = {unit.id for array in arrays[: len(ids)] for p in array.packs for unit in p.units}
        waiting_ids = held | {u.id for u in todo if u.id not in sent}
        waiting = [u for u in units if u.id in waiting_ids]
        print(
            f"submitted {len(sent)} units as {len(ids)} SLURM arrays/jobs "
            f"({_id_range(ids)}){_waiting_note(waiting, limits, queued)}; follow with: "
            f"python -m orchestrator status --run-dir {rundir.path}",
            flush=True,
        )
        return waiting

    def _sbatch(self, rundir: RunDir, array: Array, dependency: str) -> str:
        """Submit `array` (retried while the controller is away) and record its tasks; its job
        id. A refusal for a limit raises LimitReached; any other is one clear error."""
        tasks = [pack.units for pack in array.packs]
        key = new_key()
        folder = rundir.array_dir(key)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(rundir.array_tasks_path(key), json_tasks(tasks))

        def once() -> str:
            executor = self.executor(rundir, tasks, dependency, key)
            try:
                # inside an allocation (salloc, srun, a Ray-on-SLURM job) the job must not
                # take its launcher's SLURM_* and rank variables (sbatch exports them)
                with clean_env(), executor.batch():
                    jobs = [executor.submit(*self._call(rundir, units)) for units in tasks]
            except Exception as exc:  # submitit raises its own error types for sbatch failures
                _remove_unsubmitted(folder)
                message = " ".join(str(exc).split())[-400:]
                if is_transient(message):
                    raise TransientError(message) from exc
                if LIMIT_REFUSAL.search(message):
                    raise LimitReached(message.split("error:")[-1].strip()) from exc
                raise FerError(
                    f"sbatch refused {array_job_name(tasks)} ({sum(map(len, tasks))} units): "
                    f"{message}; the arrays before it are queued and recorded in "
                    f"{rundir.submissions_path}; fix the profile (or the cluster) and "
                    f"re-launch"
                ) from exc
            return str(jobs[0].job_id).partition("_")[0]

        job = retrying(
            once,
            self.retry,
            "sbatch",
            before_retry=lambda: submitted_as(rundir.path, key, self.retry),
        )
        records: dict[str, Submission] = {}
        for index, units in enumerate(tasks):
            record = Submission(
                backend=self.name, job_id=job if len(tasks) == 1 else f"{job}_{index}", array=key
            )
            if len(units) > 1:
                record["pack"] = [unit.id for unit in units]
            records.update({unit.id: record for unit in units})
        rundir.record_submissions(records)
        return job

    def _resource_class(self, pack: Pack) -> tuple[JobResources, UnitRanks]:
        """What an array's tasks share: their resources and their ranks (a one-process unit,
        a trial say, never runs in a multi-rank unit's array)."""
        return self.profile.resources_for(pack.units), job_ranks(self.profile, [pack.units])

    def _call(self, rundir: RunDir, units: tuple[Unit, ...]) -> tuple:
        """What a task runs: UnitJob for one unit (each of its ranks), PackJob for a pack."""
        if len(units) == 1:
            gpu = self.profile.resources_for(units).gpus > 0
            return UnitJob(self.job_env(units), gpu), str(rundir.path), units[0].id
        return PackJob(self.job_env(units)), str(rundir.path), [u.id for u in units]

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
            record = Submission(backend=self.name, job_id=job)
            if len(job_units) > 1:
                record["pack"] = job_units
            rundir.record_submissions(dict.fromkeys(unit_ids, record))
            if normalise_state(state) in ACTIVE:
                adopted.update(dict.fromkeys(unit_ids, job))
        if by_job:
            print(
                f"recorded {len(by_job)} SLURM jobs that a killed launch had submitted without "
                f"recording ({_id_range(sorted(by_job, key=job_key))}); "
                f"{len(set(adopted.values()))} still queued or running: not submitted again",
                flush=True,
            )
        return adopted

    def _unrecorded(
        self, rundir: RunDir, wanted: set[str] | None = None
    ) -> dict[str, tuple[str, str, list[str]]]:
        recorded = {unit: str(record["job_id"]) for unit, record in self._jobs(rundir).items()}
        return unrecorded_jobs(rundir.path, recorded, wanted, self.retry)

    def _active_jobs(
        self, rundir: RunDir, units: list[Unit], in_submission: set[str]
    ) -> tuple[dict[str, str], set[str]]:
        """Dependencies outside this submission that are not done: the job ids of the active
        ones, and the ids of the others (neither done, nor active, nor submitted now: they
        cannot be waited for)."""
        outside = {d for u in units for d in u.deps if d not in in_submission}
        pending = {d for d in outside if not rundir.is_done(d)}
        if not pending:
            return {}, set()
        states = self.states(rundir)
        records = rundir.submissions()
        active = {d: str(records[d]["job_id"]) for d in pending if states.get(d) in ACTIVE}
        return active, pending - set(active) - {d for d in pending if rundir.is_done(d)}

    # --- waiting ----------------------------------------------------------------------------
    def wait(self, rundir: RunDir, units: list[Unit], waiting: list[Unit] | None = None) -> None:
        """Block until every unit's job has finished; one progress line per finished unit.

        `waiting`: units not submitted yet for lack of room under the cluster's limits; each
        time jobs end, those whose parents did not fail are submitted as far as room allows
        (a unit whose parent failed is blocked, as SLURM would have cancelled it).
        """
        progress = Progress(len(units))
        by_id = {unit.id: unit for unit in units}
        remaining = dict(by_id)
        unsent = list(waiting or [])
        outcome: dict[str, str] = {}
        seen_at: dict[str, float] = {unit.id: time.monotonic() for unit in units}
        interval = POLL_FIRST_S
        while remaining:
            records = rundir.submissions()
            held = {u.id for u in unsent}
            ids = {
                u: str(records[u]["job_id"]) for u in remaining if u in records and u not in held
            }
            since = min((records[u].get("submitted_at", time.time()) for u in ids), default=None)
            raw = raw_states(list(ids.values()), since, self.retry)
            now = time.monotonic()
            ended = 0
            for unit_id in list(remaining):
                if unit_id in held:
                    continue
                state = raw.get(ids.get(unit_id, ""))
                if state is not None:
                    seen_at[unit_id] = now
                    if normalise_state(state) in ACTIVE:
                        continue
                elif now - seen_at[unit_id] < UNKNOWN_GRACE_S:
                    continue
                unit = remaining.pop(unit_id)
                pack = records[unit_id].get("pack", []) if unit_id in records else []
                job_units = [by_id.get(u, unit) for u in pack]
                outcome[unit_id] = self._finished(rundir, unit, state, job_units or [unit])
                if outcome[unit_id] == "failed" and unit_id in records:
                    post_mortem(rundir, unit_id, records[unit_id])
                detail = (
                    unit_summary(rundir, unit)
                    if outcome[unit_id] == "done"
                    else rundir.failure(unit_id) or _reason(state, outcome[unit_id])
                )
                progress.finished(unit, outcome[unit_id], detail)
                ended += 1
            if unsent and (ended or not ids):
                for unit in _blocked(unsent, outcome):
                    outcome[unit.id] = "blocked"
                    remaining.pop(unit.id)
                    progress.finished(unit, "blocked", "a dependency failed (not submitted)")
                unsent = [u for u in unsent if u.id not in outcome]
                if unsent:
                    unsent = self._submit_what_fits(rundir, unsent, topping_up=True)
                    seen_at.update(dict.fromkeys(remaining, time.monotonic()))
                    interval = POLL_FIRST_S
            if remaining:
                time.sleep(interval)
                interval = min(interval * POLL_GROWTH, POLL_MAX_S)
        progress.close()

    @staticmethod
    def _finished(rundir: RunDir, unit: Unit, state: str | None, job_units: list[Unit]) -> str:
        """done, blocked or failed: `unit`'s job (shared by `job_units`) has ended."""
        if rundir.is_done(unit.id, unit.kind):
            return "done"
        cancelled = state is not None and normalise_state(state) == State.CANCELLED
        deps = {dep for member in job_units for dep in member.deps}
        if cancelled and any(not rundir.is_done(dep) for dep in deps):
            # kill-on-invalid-dep: a parent of the job (of this unit, or of a unit packed
            # with it) failed or was cancelled
            return "blocked"
        return "failed"

    # --- state and cancel -------------------------------------------------------------------
    def _jobs(self, rundir: RunDir) -> dict[str, Submission]:
        return {
            unit_id: record
            for unit_id, record in rundir.submissions().items()
            if record.get("backend") == self.name and record.get("job_id")
        }

    def states(self, rundir: RunDir) -> dict[str, State]:
        jobs = self._jobs(rundir)
        if not jobs:
            return {}
        since = min(record.get("submitted_at", time.time()) for record in jobs.values())
        raw = raw_states([str(r["job_id"]) for r in jobs.values()], since, self.retry)
        states = {
            unit_id: normalise_state(raw[str(record["job_id"])])
            for unit_id, record in jobs.items()
            if str(record["job_id"]) in raw
        }
        for unit_id, state in states.items():  # `status` of a launch that did not --wait
            if state == State.FAILED:
                post_mortem(rundir, unit_id, jobs[unit_id])
        return states

    def record_accounting(self, rundir: RunDir) -> None:
        record_accounting(rundir, self.retry)

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
        done = slurm_call(["scancel", *sorted(job_ids, key=job_key)], self.retry)
        if done.returncode != 0:
            # scancel also fails when a job ended between the query and the call: re-check.
            still = [u for u, s in self.states(rundir).items() if u in active and s in ACTIVE]
            if still:
                raise FerError(f"scancel failed for {rundir.path}: {done.stderr.strip()}")
        return active


# srun's report of a task that ended badly, in the job's log: `srun: error: node7: task 1:
# Killed`, `... tasks 0-1: Exited with exit code 1`, `... task 3: Out Of Memory`.
SRUN_TASK_END = re.compile(r"srun: error: (\S+): tasks? (\d+)(?:[-,][\d,-]*)?: (.+?)\s*$")


def post_mortem(rundir: RunDir, unit_id: str, record: Submission) -> None:
    """Record why the failed job of `unit_id` ended where the unit could not (a rank killed
    or crashed; `dead_rank`), unless a reason is recorded already."""
    if rundir.failure(unit_id) is not None or rundir.is_done(unit_id):
        return
    died = dead_rank(rundir, str(record.get("array", "")), str(record.get("job_id", "")))
    if died is not None:
        rundir.mark_failed(unit_id, died)


def dead_rank(rundir: RunDir, array: str, job_id: str) -> str | None:
    """The reason a multi-rank unit's job ended without one of its own (a rank killed, out
    of memory, crashed in native code): the first task srun reports ending badly in the job's
    log, named as the rank it is (task N is rank N); None when the log names none."""
    if not array or not job_id:
        return None
    log = rundir.array_dir(array) / f"{job_id}_0_log.out"  # the batch script's output too
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    # the log grows by one run per requeue: the last run is the one that failed
    starts = [i for i, line in enumerate(lines) if RUN_START.match(line)]
    for line in lines[starts[-1] if starts else 0 :]:
        match = SRUN_TASK_END.search(line)
        if match is not None:
            node, rank, how = match.groups()
            return (
                f"rank {rank} ended on {node} ({how}, as srun reports in {log.name}) before the "
                f"unit recorded a reason; the job ended with it; a re-launch resumes from the "
                f"last epoch checkpoint"
            )
    return None


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


def new_key() -> str:
    """Names one array submission: its folder and its jobs' comment."""
    return uuid.uuid4().hex[:16]


def json_tasks(tasks: list[tuple[Unit, ...]]) -> str:
    return json.dumps([[unit.id for unit in units] for units in tasks])


def _blocked(unsent: list[Unit], outcome: dict[str, str]) -> list[Unit]:
    """Units (topological order) with a parent that failed or was blocked."""
    bad = {u for u, o in outcome.items() if o in ("failed", "blocked")}
    blocked = []
    for unit in unsent:
        if any(dep in bad for dep in unit.deps):
            bad.add(unit.id)
            blocked.append(unit)
    return blocked


def _waiting_note(waiting: list[Unit], limits: Limits, queued: int) -> str:
    if not waiting:
        return ""
    limit = f"{limits.source}, {queued} of your jobs were queued" if limits.source else "a limit"
    return f"; {len(waiting)} units wait for room ({limit})"
