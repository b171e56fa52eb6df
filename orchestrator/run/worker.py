"""Runs one unit inside whatever process a backend gives it (subprocess, SLURM job, Ray trial).

`python -m orchestrator.run.worker RUN_DIR UNIT_ID`, `run(run_dir, unit_id)` from submitit, Ray
and a tune trial (orchestrator.tune.trial), or `run_forked(...)` in a process the local
backend forks from its pre-loaded server. The one path from a unit's spec.json to its records.
Idempotent: a unit already in the store is not run again. A failure leaves
`units/<id>/failed.json` with a one-line reason for `status`, and re-raises. A training unit
writes live.json and TensorBoard scalars after each epoch and its rows to the store. Every
attempt, however it ends, adds its `resources` row (`orchestrator.run.resources.Meter`).

A data-parallel unit runs this same worker once per rank, each with its rank's environment
(`fer_core.ranks`). Rank 0, the leader, does all of the above; a rank > 0 only trains its share
(`run_unit` returns it nothing) and keeps no records: no resources row, live.json,
TensorBoard or store rows. Its failure is recorded only where no lower rank of the same
process group recorded one (rank 0 died, say): the lowest rank's words win, and a rank > 0
says which it is ("rank 1 of 2: ...").
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypedDict

from fer_core.errors import FerError
from fer_core.ranks import Ranks, ranks_from_env
from fer_core.records import EpochRecord, PrepareRow
from fer_core.spec import PrepareSpec, UnitSpec
from orchestrator.plan.labels import SEPARATOR
from orchestrator.run.progress import record_epoch
from orchestrator.run.resources import Meter
from orchestrator.run.rundir import TRIAL, RunDir, SpecFile
from orchestrator.run.tblog import EventWriter

EpochHook = Callable[[EpochRecord], None]


class SchedulerInfo(TypedDict):
    """The columns a worker adds to its unit's `runs` row: which scheduler ran it, where."""

    scheduler: str  # slurm, local, ray
    job_id: str
    requeues: int


def scheduler_info() -> SchedulerInfo:
    """Which scheduler runs this process, its job id and how often it was requeued.

    The local backend and Ray name themselves (FER_SCHEDULER) before SLURM's variables are
    looked at: a launch inside an allocation (`salloc`, Ray on SLURM) passes the allocation's
    SLURM_JOB_ID down to its workers, and that job is not the one running the unit."""
    if "FER_SCHEDULER" not in os.environ and "SLURM_JOB_ID" in os.environ:
        return {
            "scheduler": "slurm",
            "job_id": _slurm_job_id(),
            "requeues": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
        }
    return {
        "scheduler": os.environ.get("FER_SCHEDULER", "local"),
        "job_id": os.environ.get("FER_JOB_ID", str(os.getpid())),
        "requeues": 0,
    }


def _slurm_job_id() -> str:
    """`A_i` for task i of array A (as the slurm backend records it), else the job id."""
    if "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def prepare(unit_id: str, spec: PrepareSpec) -> PrepareRow:
    """Make a dataset ready for training: synthetic twin if asked, index, face crops."""
    from fer_core.data.faces import prepare_faces
    from fer_core.data.index import build_index
    from fer_core.data.synthetic import twins as synth
    from fer_core.data.synthetic.wild import write_wild_twin

    root = Path(spec.root)
    if spec.synthetic:  # built atomically, reused when present with the same parameters
        custom = spec.image_size
        if spec.scale is not None:
            write_wild_twin(spec.dataset, root, spec.scale)
        elif spec.dataset == "ckplus":
            size = (custom[0], custom[1]) if custom else synth.CKPLUS_SIZE
            synth.write_ckplus_twin(root, synth.DEFAULT_ROSTER, size)
        else:
            synth.write_oulu_twin(root, (custom[0], custom[1]) if custom else synth.OULU_SIZE)
    out_dir = Path(spec.out_dir)
    index = build_index(
        spec.dataset,
        root,
        manifest=spec.manifest,
        n_folds=spec.n_folds,
        fold_rule=spec.fold_rule,
        options=spec.options,
    )
    index.write(out_dir / "index.parquet")
    report = prepare_faces(index, out_dir, spec.crop_size, detector=spec.detector)
    return {
        "unit_id": unit_id,
        "dataset": spec.name,
        "kind": spec.dataset,
        "root": str(root),
        "synthetic": spec.synthetic,
        "images": len(index.records),
        "subjects": len({r.subject for r in index.records}),
        "classes": ",".join(index.classes),
        "fold_rule": index.fold_rule,
        "detector": spec.detector,
        "crop_size": spec.crop_size,
        "detected": report.detected,
        "fallback": report.fallback,
        "reused": report.reused,
        "fingerprint": report.fingerprint,
        "skipped": json.dumps(index.skipped, sort_keys=True),
        "prepared_at": time.time(),
    }


def run(run_dir: str | Path, unit_id: str, on_epoch: EpochHook | None = None) -> str:
    """Run unit `unit_id` of `run_dir` unless it is already done; returns its state.

    A failure is recorded in `failed.json` for `status`; an interruption (SystemExit from a
    scheduler's requeue, Ctrl-C, Tune stopping a trial) is not a failure and is not recorded.
    `on_epoch` sees each epoch's record after the unit's own records (a tune trial reports
    it to Tune). A `trial` unit scores no test images (nested selection: its fold is not
    looked at). On a rank > 0 of a data-parallel unit (`fer_core.ranks`) it trains that
    rank's share and records nothing but its failure (module docstring); `on_epoch` is the
    leader's alone.
    """
    rundir = RunDir(Path(run_dir))
    body = rundir.read_spec(unit_id)
    kind = body["kind"]
    if rundir.is_done(unit_id, kind):
        return "already done"
    ranks = ranks_from_env()
    if not ranks.leader:
        _run(rundir, unit_id, body, None, ranks)
        return f"rank {ranks.rank} of {ranks.world_size} done"
    rundir.sweep_temp(unit_id)  # an earlier attempt killed mid-write left its temp files
    with Meter(rundir, unit_id, kind, dict(scheduler_info())).attempt():
        _run(rundir, unit_id, body, on_epoch, ranks)
    return "done"


def _run(
    rundir: RunDir, unit_id: str, body: SpecFile, on_epoch: EpochHook | None, ranks: Ranks
) -> None:
    """Run the unit and (the leader) store its rows; a failure is recorded and re-raised."""
    kind, name = body["kind"], body["name"]
    try:
        from fer_core.unit import run_unit  # inside: a broken install is a recorded failure

        if kind == "prepare":
            row = prepare(unit_id, PrepareSpec.from_dict(body["spec"]))
            rundir.store.write("prepare", unit_id, [row])
        else:
            spec = UnitSpec.from_dict(body["spec"])
            hook = _epoch_logger(rundir, unit_id, body, spec, on_epoch) if ranks.leader else None
            result = run_unit(
                spec, rundir.work_dir(unit_id), on_epoch=hook, score_test=kind != TRIAL
            )
            if not ranks.leader:
                return  # the leader stores the unit's rows (and clears failed.json)
            if result is None:
                raise FerError(f"unit {unit_id}: training returned no result on rank 0")
            run_row = {
                **result["run"],
                **scheduler_info(),
                "worker_host": socket.gethostname(),
                "unit_label": name,  # unique in the run (orchestrator.plan.labels)
                "variant": name.partition(SEPARATOR)[2],  # the values telling it apart
            }
            rundir.store.write_unit(unit_id, run_row, result["predictions"], result["epochs"])
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not isinstance(exc, FerError):
            reason = f"{type(exc).__name__}: {reason}"
        if not ranks.leader:
            reason = f"rank {ranks.rank} of {ranks.world_size}: {reason}"
        try:
            rundir.mark_failed(unit_id, reason, rank=ranks.rank, group=_group(ranks))
        except (OSError, FerError):  # e.g. the run dir's disk is full too: keep the cause
            print(f"error: {reason}", file=sys.stderr)
        raise
    rundir.clear_failed(unit_id)


def _group(ranks: Ranks) -> str | None:
    """The process group this rank belongs to, named by its rendezvous (`MASTER_ADDR:PORT`,
    fresh for each attempt), so that ranks of one attempt know each other's failure records
    from an earlier attempt's; None for a one-process unit."""
    if not ranks.distributed:
        return None
    return f"{os.environ.get('MASTER_ADDR', '')}:{os.environ.get('MASTER_PORT', '')}"


def _epoch_logger(
    rundir: RunDir, unit_id: str, body: SpecFile, spec: UnitSpec, extra: EpochHook | None
) -> EpochHook:
    """After each epoch: TensorBoard scalars and the live view's `live.json`, then `extra`
    (last: Tune may stop a trial inside it)."""
    events = EventWriter(rundir.events_dir(body["kind"], body["name"], spec))
    epochs = int(spec.config["epochs"])

    def on_epoch(record: EpochRecord) -> None:
        events.epoch(record)
        record_epoch(rundir, unit_id, record, epochs)
        if extra is not None:
            extra(record)

    return on_epoch


@contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout/stderr (file descriptors too) to a unit's log for the
    block: a unit run inside a longer-lived process (a Ray trial) logs where its unit is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = [os.dup(1), os.dup(2)]
    with open(path, "ab", buffering=0) as log:
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def death_reason(code: int, log_path: Path, who: str = "") -> str:
    """Why a worker process ended with `code` without recording an error itself (it was
    killed, or crashed): the reason `status` shows, whichever backend started it. `who`
    names the process where the unit ran as several ("rank 1 of 2")."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = {"SIGKILL": " (out of memory, or killed by hand)", "SIGTERM": " (stopped)"}
        return (
            f"{who or 'the worker process'} was killed by {name}{why.get(name, '')} before it "
            "finished; a re-launch resumes it from its last epoch checkpoint"
        )
    return (
        f"{who or 'the worker'} exited with status {code} without recording an error; "
        f"see {log_path}"
    )


def run_forked(
    run_dir: str, unit_id: str, log_path: str, env: dict[str, str], threads: int
) -> None:
    """`python -m orchestrator.run.worker RUN_DIR UNIT_ID` in a process forked from a server that
    has torch loaded already: same environment, log and exit status as that command, without
    its seconds of imports. Exits the process; interrupted (Ctrl-C), it dies of SIGINT as that
    command would, rather than exit with multiprocessing's status 1, which reads as a failure."""
    os.environ.clear()
    os.environ.update(env)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
        os.dup2(log, stream.fileno())
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)  # as PYTHONUNBUFFERED: the log is live
    os.close(log)
    from fer_core.runtime import use_threads

    use_threads(threads)
    try:
        code = main([run_dir, unit_id])
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        raise
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m orchestrator.run.worker RUN_DIR UNIT_ID", file=sys.stderr)
        return 2
    try:
        state = run(args[0], args[1])
    except FerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args[1]}: {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
