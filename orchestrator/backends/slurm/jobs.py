"""The SLURM side of the slurm backend: what a job runs, and what SLURM says about jobs.

`UnitJob` (one unit) and `PackJob` (k units as k worker processes) are the callables
submitit pickles into a job. Both are checkpointable: on a timeout or preemption signal
submitit calls `checkpoint()` and requeues the same job id, and the requeued run trains on
from each unit's `work/last.pt` (the trainer resumes from it by itself; a unit already done
returns at once). This module imports nothing heavy: a job unpickles it before torch is
loaded, so the environment it sets (thread counts, profile `env:`) is in place when torch
starts.

A multi-rank unit (data-parallel: `SlurmProfile.unit_ranks`) is one job of N SLURM tasks,
each running `UnitJob` as one rank (`srun --kill-on-bad-exit`: a rank that dies ends the
step, so the job ends with its unit). Each task exports torch's `env://` variables from
submitit's `TorchDistributedEnvironment`, with a rendezvous port of this attempt
(`rendezvous_port`: the job id and SLURM_RESTART_COUNT), never the port of an earlier run of
the same job id, whose store may linger. On a time limit or preemption (USR2) submitit's
handler checkpoints and requeues from rank 0 alone; the other ranks stop quietly, as for
`scancel`.

`raw_states(job_ids)` asks `squeue` (the controller) and, for the jobs it no longer holds,
`sacct` (the accounting record), both as argv lists; never submitit's `job.state`, which
hangs without accounting. `tagged_jobs(run_dir)` finds a run dir's jobs (array tasks one by
one) by their `--comment` (`job_comment`), whether or not the run dir recorded them. Every
call to SLURM's tools is retried while the controller does not answer (`control.py`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable

from fer_core.errors import FerError
from fer_core.ranks import COLLECTIVE_TIMEOUT, DEFAULT_TIMEOUT_S, NODES
from orchestrator.backends.slurm.control import Retry, slurm_call
from orchestrator.run.states import State

# SLURM job state (first word: "CANCELLED by 0" -> CANCELLED) -> backend state name.
STATE_MAP = {
    "PENDING": State.PENDING,
    "CONFIGURING": State.PENDING,
    "REQUEUED": State.PENDING,
    "REQUEUE_FED": State.PENDING,
    "REQUEUE_HOLD": State.PENDING,
    "RESIZING": State.PENDING,
    "SUSPENDED": State.PENDING,
    "STOPPED": State.PENDING,
    "RUNNING": State.RUNNING,
    "COMPLETING": State.RUNNING,
    "SIGNALING": State.RUNNING,
    "STAGE_OUT": State.RUNNING,
    "FAILED": State.FAILED,
    "TIMEOUT": State.FAILED,
    "OUT_OF_MEMORY": State.FAILED,
    "NODE_FAIL": State.FAILED,
    "BOOT_FAIL": State.FAILED,
    "SPECIAL_EXIT": State.FAILED,
    "CANCELLED": State.CANCELLED,
    "DEADLINE": State.CANCELLED,
    "PREEMPTED": State.CANCELLED,  # a preempted job that was requeued shows REQUEUED/PENDING
    "REVOKED": State.CANCELLED,
    "COMPLETED": State.COMPLETED,
}


# The rendezvous ports of multi-rank units (submitit's helper draws from the same range).
PORT_MIN, PORT_SPAN = 20000, 40000
RESTART_COUNT = "SLURM_RESTART_COUNT"  # set by SLURM from the first requeue of a job on
# Rank 0's first line of each run of a job (`UnitJob._join_ranks`): a job's log grows by one
# run per requeue, and the post-mortem reads the last.
RUN_START = re.compile(r"rank 0 of \d+ .*, restart \d+")


def rendezvous_port(job_id: str, restart: int) -> int:
    """The process group's port of attempt `restart` of job `job_id` (`A_i` for an array
    task): every rank of the attempt computes the same one without talking to the others, and
    each requeue of the job moves to the next port, so a requeued group never meets the store
    (or a socket in TIME_WAIT) of its previous run. submitit's helper seeds it from the job id
    alone, the same port on every run."""
    base = int(hashlib.sha256(job_id.encode()).hexdigest()[:8], 16)
    return PORT_MIN + (base + restart) % PORT_SPAN


class UnitJob(Checkpointable):
    """Runs one unit of a run dir inside a SLURM job, as its one process or, in a job of
    several tasks, as one rank of it; requeued (not restarted) on preemption.

    `env` is set before torch loads (threads, the profile's `env:`, and for a multi-rank unit
    FER_NODES and FER_COLLECTIVE_TIMEOUT_S); `gpu`: each rank takes the GPU of its local rank.
    """

    def __init__(self, env: dict[str, str] | None = None, gpu: bool = False):
        self.env = dict(env or {})
        self.gpu = gpu

    def __call__(self, run_dir: str, unit_id: str) -> str:
        # submitit ignores SIGTERM, so `scancel` would leave training running until SIGKILL
        # (KillWait, often 30 s) while SLURM already reports the job cancelled. Stop at once:
        # the unit resumes from its last epoch either way. Time limits and preemption notices
        # still arrive as USR2 first (submitit's checkpoint-and-requeue handler).
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.environ.update(self.env)
        if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
            self._join_ranks()
        from orchestrator.run.worker import run

        return run(run_dir, unit_id)

    def _join_ranks(self) -> None:
        """Export this task's place in the unit's process group (torch's `env://`), log it,
        and on ranks > 0 let a USR2 stop the process quietly (rank 0 requeues the job)."""
        from submitit import JobEnvironment
        from submitit.helpers import TorchDistributedEnvironment

        job = JobEnvironment()
        restart = int(os.environ.get(RESTART_COUNT, "0") or 0)
        # the helper takes MASTER_PORT from the environment when set: this attempt's port
        os.environ["MASTER_PORT"] = str(rendezvous_port(job.job_id, restart))
        dist = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        os.environ.setdefault(NODES, str(job.num_nodes))
        if self.gpu:
            os.environ["CUDA_VISIBLE_DEVICES"] = local_gpu(dist.local_rank)
        print(
            f"rank {dist.rank} of {dist.world_size} (local rank {dist.local_rank} of "
            f"{dist.local_world_size}, node {job.node} of {job.num_nodes}) in job {job.job_id}: "
            f"rendezvous {dist.master_addr}:{dist.master_port}, restart {restart}, collective "
            f"timeout {os.environ.get(COLLECTIVE_TIMEOUT, DEFAULT_TIMEOUT_S)} s",
            flush=True,
        )
        if dist.rank > 0:
            requeue = signal.getsignal(signal.SIGUSR2)
            signal.signal(signal.SIGUSR2, _stop_quietly(dist.rank, requeue))

    def checkpoint(self, run_dir: str, unit_id: str) -> Any:
        # Nothing to save here: the trainer writes work/last.pt after every epoch, and the
        # requeued job's worker resumes from it. Resubmit the same call.
        return super().checkpoint(run_dir, unit_id)


def local_gpu(local_rank: int) -> str:
    """The GPU of a task's local rank: its entry of the job's CUDA_VISIBLE_DEVICES (SLURM's ids
    of the node's allocated GPUs), or the index itself where none is set, as submitit sets
    it."""
    visible = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return visible[local_rank] if local_rank < len(visible) else str(local_rank)


def _stop_quietly(rank: int, requeue: Any) -> Any:
    """A USR2 handler for a rank > 0: submitit's (it logs, and only rank 0 requeues), then a
    quiet end (an interruption, not a failure): the group is breaking for the requeue."""

    def handler(signum: int, frame: Any) -> None:
        if callable(requeue):
            requeue(signum, frame)
        print(f"rank {rank}: stopping for the requeue of this job (rank 0 requeues)", flush=True)
        raise SystemExit(0)

    return handler


class PackJob(Checkpointable):
    """Runs the units of one pack as parallel worker processes inside one SLURM job.

    Each unit runs as `python -m orchestrator.run.worker RUN_DIR UNIT_ID` would, in a process
    of its own (a crash in one cannot take its siblings down), forked from a server that
    loaded torch once, as the local backend's workers are (`local.worker_context`), with
    `env` (its share of the job's CPU threads) and, when the job has several GPUs, one of
    them round robin; its output goes to `units/<id>/slurm/<job id>_pack_log.out`. The job
    fails when any unit failed, so that afterok dependants do not start; the siblings'
    results are in the store regardless.
    """

    def __init__(self, env: dict[str, str] | None = None):
        self.env = dict(env or {})

    def __call__(self, run_dir: str, unit_ids: list[str]) -> str:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as UnitJob: scancel stops it at once
        workers: dict[str, Any] = {}
        # SLURM signals every process of the job: only submitit's handler in this process may
        # act on USR2 (checkpoint and requeue the whole job). The fork server and the workers
        # inherit "ignore" (it survives exec and fork); this process gets its handler back.
        handler = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        try:
            for index, unit_id in enumerate(unit_ids):
                workers[unit_id] = self._start(run_dir, unit_id, index)
            signal.signal(signal.SIGUSR2, handler)
            for worker in workers.values():
                worker.join()
            codes = {unit_id: worker.exitcode for unit_id, worker in workers.items()}
        finally:  # submitit exits from its USR2 handler to requeue: the workers go with it
            signal.signal(signal.SIGUSR2, handler)
            for worker in workers.values():
                if worker.is_alive():
                    worker.kill()
                    worker.join()
        failed = [unit_id for unit_id, code in codes.items() if code != 0]
        if failed:
            _record_deaths(run_dir, {unit_id: codes[unit_id] for unit_id in failed})
            raise FerError(
                f"{len(failed)} of the {len(unit_ids)} units of this job failed: "
                f"{', '.join(failed)} (reasons in {run_dir}/units/<id>/failed.json)"
            )
        return f"{len(unit_ids)} units done"

    def _start(self, run_dir: str, unit_id: str, index: int) -> Any:
        from orchestrator.backends.local import worker_context  # after the job's env is set
        from orchestrator.run.worker import run_forked

        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        gpus = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g]
        if len(gpus) > 1:
            env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
        log = _pack_log(run_dir, unit_id)
        log.parent.mkdir(parents=True, exist_ok=True)
        threads = int(env.get("OMP_NUM_THREADS", "1"))
        args = (run_dir, unit_id, str(log), env, threads)
        worker = worker_context().Process(target=run_forked, args=args, name=unit_id)
        worker.start()
        return worker

    def checkpoint(self, run_dir: str, unit_ids: list[str]) -> Any:
        # As UnitJob: the workers checkpoint every epoch; the requeued job runs the same
        # units, and those already done return at once.
        return super().checkpoint(run_dir, unit_ids)


def _pack_log(run_dir: str, unit_id: str) -> Path:
    """A packed unit's worker output, in its own unit folder."""
    from orchestrator.run.rundir import RunDir  # here: keeps this module light

    return RunDir(Path(run_dir)).pack_log(unit_id, os.environ.get("SLURM_JOB_ID", "nojob"))


def _record_deaths(run_dir: str, codes: dict[str, int]) -> None:
    """A worker that died without recording why (killed, crashed at start): say so for
    `status`, as the local backend does."""
    from orchestrator.run.rundir import RunDir  # after the workers: keeps this module light
    from orchestrator.run.worker import death_reason

    rundir = RunDir(Path(run_dir))
    for unit_id, code in codes.items():
        if rundir.failure(unit_id) is not None:
            continue
        reason = death_reason(code, _pack_log(run_dir, unit_id))
        rundir.mark_failed(unit_id, reason)


def run_tag(run_dir: Path) -> str:
    """`fer:<12 hex>`: names a run dir (by its resolved path) in the comment of its jobs.

    The path, not the grid: two run dirs of one grid must not take each other's jobs, and a
    job works on the run dir at the path it was submitted with.
    """
    return "fer:" + hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]


def job_comment(run_dir: Path, key: str) -> str:
    """`--comment` of an array (or single job): its run dir's tag and its key, which names
    `RUN_DIR/arrays/<key>/tasks.json` (the units of each task, written before the sbatch;
    a comment holds at most 1,024 characters, far fewer than an array's unit ids)."""
    return f"{run_tag(run_dir)}:{key}"


def array_tasks(run_dir: Path, key: str) -> list[list[str]]:
    """Unit ids of each task of the array `key` ([] if its record is missing or unreadable)."""
    try:
        from orchestrator.run.rundir import RunDir  # here: keeps this module light

        tasks = json.loads(RunDir(Path(run_dir)).array_tasks_path(key).read_text())
    except (OSError, ValueError):
        return []
    return tasks if isinstance(tasks, list) else []


def job_key(job_id: str) -> tuple[int, int]:
    """`123` -> (123, -1), `123_4` -> (123, 4): SLURM hands out ids in increasing order, and a
    requeued job (or array task) keeps its id."""
    base, _, task = job_id.partition("_")
    return int(base), int(task) if task else -1


def tagged_jobs(run_dir: Path, retry: Retry) -> dict[str, tuple[str, list[str]]]:
    """job id (`A_i` for an array task) -> (raw state, unit ids) of every job the controller
    holds for `run_dir`.

    Read from the jobs' comments, which sbatch hands to the controller with each job: unlike
    submissions.json they cannot miss a job that sbatch accepted. squeue also lists jobs that
    ended less than MinJobAge ago; older ones have ended, so nothing of them is left to wait
    on or to run twice. A squeue that does not answer is an error, not "none": that guess
    could submit a unit twice.
    """
    jobs: dict[str, tuple[str, list[str]]] = {}
    tasks: dict[str, list[list[str]]] = {}
    for job_id, state, key in _tagged(run_dir, retry):
        if key not in tasks:
            tasks[key] = array_tasks(run_dir, key)
        index = max(job_key(job_id)[1], 0)
        if index < len(tasks[key]):
            jobs[job_id] = (state, list(tasks[key][index]))
    return jobs


def submitted_as(run_dir: Path, key: str, retry: Retry) -> str | None:
    """The job id of the array (or job) `key` if the controller holds it: an sbatch that
    failed on its way back may still have been accepted."""
    return next(
        (job_id.partition("_")[0] for job_id, _, k in _tagged(run_dir, retry) if k == key), None
    )


def _tagged(run_dir: Path, retry: Retry) -> list[tuple[str, str, str]]:
    """(job id, raw state, key) of the controller's jobs whose comment names `run_dir`."""
    argv = ["squeue", "--me", "--noheader", "-r", "--states=all", "--format=%i|%T|%k"]
    done = slurm_call(argv, retry)
    if done.returncode != 0:
        raise FerError(
            f"squeue failed ({' '.join(done.stderr.split())[:200]}): cannot check {run_dir} for "
            f"jobs a killed launch left unrecorded; retry once the SLURM controller answers"
        )
    prefix = run_tag(run_dir) + ":"
    found = []
    for line in done.stdout.splitlines():
        job_id, _, rest = line.strip().partition("|")
        state, _, comment = rest.partition("|")
        if comment.startswith(prefix) and re.fullmatch(r"\d+(_\d+)?", job_id):
            found.append((job_id, state, comment[len(prefix) :]))
    return found


def unrecorded_jobs(
    run_dir: Path,
    recorded: dict[str, str],
    wanted: set[str] | None,
    retry: Retry,
) -> dict[str, tuple[str, str, list[str]]]:
    """unit id -> (job id, raw state, the job's units) of the newest job of `run_dir` (by its
    comment) that is newer than the unit's recorded job (`recorded`: unit id -> job id), for
    the `wanted` units (default: all).

    A tagged job older than the record is an earlier attempt, not a missed one.
    """
    found: dict[str, tuple[str, str, list[str]]] = {}
    tagged = tagged_jobs(run_dir, retry)
    for job, (state, unit_ids) in sorted(tagged.items(), key=lambda j: job_key(j[0])):
        for unit_id in unit_ids:
            newer = unit_id not in recorded or job_key(job) > job_key(recorded[unit_id])
            if newer and (wanted is None or unit_id in wanted):
                found[unit_id] = (job, state, unit_ids)  # ascending: the newest wins
    return found


def normalise_state(raw: str) -> State:
    """`CANCELLED by 0`, `CANCELLED+` -> `cancelled`; unknown states count as pending."""
    word = raw.split()[0].rstrip("+") if raw.strip() else "PENDING"
    return STATE_MAP.get(word, State.PENDING)


def _query(argv: list[str], retry: Retry) -> dict[str, str]:
    """`JOBID|STATE` lines of a sacct/squeue call -> {job id: raw state}, an array's pending
    tasks (`A_[2-4%2]`) one by one; {} when the tool refuses (squeue: all ids unknown; sacct:
    no accounting storage). A controller that does not answer is retried, then an error."""
    done = slurm_call(argv, retry)
    if done.returncode != 0:
        return {}
    states = {}
    for line in done.stdout.splitlines():
        job_id, sep, state = line.strip().partition("|")
        if sep and job_id:
            states.update(dict.fromkeys(expand_job_ids(job_id), state.strip()))
    return states


def expand_job_ids(job_id: str) -> list[str]:
    """`7_[0-2,5%4]` -> 7_0, 7_1, 7_2, 7_5; any other id as it is."""
    match = re.fullmatch(r"(\d+)_\[([0-9,-]+)(%\d+)?\]", job_id)
    if match is None:
        return [job_id]
    ids = []
    for part in match.group(2).split(","):
        first, _, last = part.partition("-")
        ids += [f"{match.group(1)}_{i}" for i in range(int(first), int(last or first) + 1)]
    return ids


def raw_states(job_ids: list[str], since: float | None, retry: Retry) -> dict[str, str]:
    """job id -> raw SLURM state for `job_ids` (`A` or array task `A_i`; those neither
    squeue nor sacct knows are left out).

    The controller (`squeue`) first: it is ahead of accounting, and only it shows a cancelled
    job as COMPLETING while its processes are still being killed (sacct already says
    CANCELLED), which keeps a re-launch from starting a second worker on the same work dir.
    `sacct` for the jobs the controller has forgotten (MinJobAge after they ended); `since`
    (epoch seconds, the earliest submission) bounds its time window, which otherwise starts
    at midnight and would miss a launch of an earlier day. Both are asked for whole arrays.
    """
    job_ids = list(dict.fromkeys(job_ids))  # the units of a pack share one job
    if not job_ids:
        return {}
    arrays = ",".join(dict.fromkeys(j.partition("_")[0] for j in job_ids))
    squeue = ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", arrays]
    states = {k: v for k, v in _query(squeue, retry).items() if k in job_ids}
    missing = [j for j in job_ids if j not in states]
    if missing:
        arrays = ",".join(dict.fromkeys(j.partition("_")[0] for j in missing))
        sacct = ["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", arrays]
        if since is not None:
            start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since - 86400))
            sacct += ["-S", start]
        states.update({k: v for k, v in _query(sacct, retry).items() if k in missing})
    return states
