"""The embedded default backend: units as processes on this machine, N at a time.

Each unit runs in its own process (a crash or a leak in one training cannot take the
launcher down), started as soon as its dependencies are done; `launch` blocks until all have
finished and prints progress as they do. The processes are forked from a server that loaded
torch once (multiprocessing's forkserver, preloading fer_core.runtime.PRELOAD): a fresh
`python -m orchestrator.run.worker` spends 3-6 s of a 2-core machine importing torch and
torch._dynamo, more than a small unit trains. A forked worker behaves as that command would
(same environment, log file, exit status; it outlives a killed launcher).

One thread starts and joins every worker. multiprocessing's `Process.start()` first polls
the exit status of every other child it started (`process._cleanup()`); a forkserver child's
status is a message read from a pipe, so when a poll in one thread and a `join()` in another
both find it ready, the one that reads second finds the pipe empty and closed, which
multiprocessing reports as exit status 255, for a unit that finished.
So the launcher waits on the workers' sentinels itself, in the thread that starts them.

An interruption is not a failure: Ctrl-C, or SIGTERM to the launcher (what `cancel` sends),
stops the running workers, starts nothing more and records nothing; the stopped units stay
to do, and a re-launch resumes them from their last epoch checkpoint.

A data-parallel unit (`procs_per_unit` > 1) runs as that many workers forked from the same
server, one per rank, each with its rank's environment (`fer_core.ranks.rank_env`, a fresh
rendezvous port per attempt) and `threads_per_job` threads; rank 0's output is the unit's
log, rank r's is `local.rank<r>.log` beside it. It counts as one of the `jobs` units at once,
so up to `jobs` x `procs_per_unit` worker processes run. The ranks live and die together:
the first to end with a non-zero status or a signal ends the others (SIGTERM, then SIGKILL
after GRACE_S), so a dead rank fails its unit at once instead of leaving the rest waiting
out the collective timeout; the failure names that rank and how it ended. Ctrl-C or SIGTERM
to any rank stops the unit, as to a one-process worker.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

from fer_core.errors import FerError
from fer_core.ranks import RANK_ENV, free_port, rank_env
from fer_core.runtime import PRELOAD
from orchestrator.backends.base import Backend
from orchestrator.plan.profiles import LocalProfile
from orchestrator.plan.unit import Unit
from orchestrator.run.processes import has_open, process_start
from orchestrator.run.progress import Progress, unit_summary
from orchestrator.run.rundir import RankProcess, RunDir, Submission
from orchestrator.run.states import State
from orchestrator.run.worker import death_reason, run_forked

POLL_S = 1.0  # how often a unit waiting on another launch's worker looks again
GRACE_S = 5.0  # a rank told to stop (SIGTERM) that still runs after this gets SIGKILL
WAIT = "wait"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # a worker that died of one was interrupted


def _processes(record: Submission) -> list[RankProcess]:
    """The worker processes a submission record names: every rank's, or the one worker's."""
    if "ranks" in record:
        return record["ranks"]
    return [{"pid": int(record["job_id"]), "start": record.get("pid_start")}]


def _live(record: Submission) -> list[int]:
    """The pids of a record's worker processes that still run (a pid now another process's,
    with another start time, is not one of them)."""
    return [
        p["pid"]
        for p in _processes(record)
        if p["start"] is not None and process_start(p["pid"]) == p["start"]
    ]


@dataclass
class _Group:
    """The worker processes of one running unit, by rank (one for most units), and how they
    ended: `first` is the first rank to end non-zero (exit status or signal) and its code;
    once there is one, the others are told to stop, and SIGKILLed at `kill_at` if still
    running (time.monotonic()). `interrupted`: the unit was stopped, not failed: a rank
    died of Ctrl-C or SIGTERM before any rank failed (not the launcher's SIGTERM ending a
    failed group), or the launch was interrupted before any rank of a data-parallel unit
    failed (a rank that then fails has lost a stopped peer)."""

    unit: Unit
    processes: list[BaseProcess]
    exits: dict[int, int] = field(default_factory=dict)  # rank -> exit code
    first: tuple[int, int] | None = None
    kill_at: float | None = None
    interrupted: bool = False

    @property
    def finished(self) -> bool:
        return len(self.exits) == len(self.processes)

    def sentinels(self) -> list[int]:
        return [p.sentinel for r, p in enumerate(self.processes) if r not in self.exits]

    def reap(self, ended: set[object]) -> None:
        """Join the ranks whose sentinel is in `ended`; the first to end non-zero ends the
        group. Of ranks seen ending together, one killed by a signal is taken as the cause
        (the others likely failed for its loss), then the lowest rank."""
        failed = []
        for rank, process in enumerate(self.processes):
            if rank in self.exits or process.sentinel not in ended:
                continue
            process.join()
            code = process.exitcode
            assert code is not None  # a joined process has one
            self.exits[rank] = code
            if code != 0:
                failed.append((code >= 0, rank, code))
            if -code in STOP_SIGNALS and self.first is None:  # not one ending a failed group
                self.interrupted = True
        if failed and self.first is None:
            _, rank, code = min(failed)
            self.first = (rank, code)
            self.stop()

    def stop(self, interrupted: bool = False) -> None:
        """SIGTERM the ranks still running; SIGKILL them after GRACE_S (`enforce`).
        `interrupted`: the launch was, which stops a data-parallel unit that had not
        failed yet (a one-process worker is judged by its own exit, as it always was)."""
        if interrupted and self.first is None and len(self.processes) > 1:
            self.interrupted = True
        for rank, process in enumerate(self.processes):
            if rank not in self.exits:
                process.terminate()
        if self.kill_at is None:
            self.kill_at = time.monotonic() + GRACE_S

    def enforce(self) -> None:
        """SIGKILL the ranks that outlived their grace (one stuck in a collective or in C)."""
        if self.kill_at is not None and time.monotonic() >= self.kill_at:
            for rank, process in enumerate(self.processes):
                if rank not in self.exits:
                    process.kill()


# What the fork server loads once for all its workers: PRELOAD (a training's imports), the
# worker, and pandas, which pyarrow imports at a unit's first store write
# (`Table.from_pylist`): 1-1.5 s of every unit on a busy 2-core machine.
WORKER_PRELOAD = (*PRELOAD, "orchestrator.run.worker", "pandas")


def worker_context() -> multiprocessing.context.ForkServerContext:
    """The forkserver that workers fork from; it loads WORKER_PRELOAD when it first starts."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(WORKER_PRELOAD))
    return context


class _Interrupts:
    """Ctrl-C and SIGTERM (`cancel`, a shutdown) during a launch, noted rather than raised:
    the launch loop stops where every worker it started is recorded and can be stopped.
    Signal handlers are the main thread's; elsewhere the defaults stay."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._note) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signum


class LocalBackend(Backend[LocalProfile]):
    name = "local"

    def submit(self, rundir: RunDir, units: list[Unit], wait: bool = True) -> None:
        jobs = self.profile.jobs
        by_id = {unit.id: unit for unit in units}
        pending = list(units)
        failed: set[str] = set()  # failed, blocked or stopped: their dependants cannot run
        running: dict[str, _Group] = {}  # by unit id
        told: set[str] = set()  # units said to wait on a worker of an earlier launch
        progress = Progress(len(units))
        with _Interrupts() as interrupts:
            while (pending or running) and interrupts.signal is None:
                for unit in list(pending):
                    if len(running) >= jobs:
                        break
                    if any(dep in failed for dep in unit.deps):
                        pending.remove(unit)
                        failed.add(unit.id)
                        progress.finished(unit, "blocked", "a dependency failed or was stopped")
                        continue
                    waiting = [
                        d for d in unit.deps if d in by_id and not rundir.is_done(d, by_id[d].kind)
                    ]
                    if waiting:
                        continue
                    blocker = self._outside_blocker(rundir, unit, by_id)
                    if blocker == WAIT:
                        if unit.id not in told:
                            told.add(unit.id)
                            print(
                                f"{unit.name} waits for a dependency still running from an "
                                "earlier launch",
                                flush=True,
                            )
                        continue
                    if blocker:
                        pending.remove(unit)
                        failed.add(unit.id)
                        progress.finished(unit, "blocked", blocker)
                        continue
                    pending.remove(unit)
                    running[unit.id] = self._start(rundir, unit)
                if not running:
                    if pending:
                        time.sleep(POLL_S)  # only units waiting on a worker of an earlier launch
                    continue
                for group in self._reap(running):
                    state, detail = self._ended(rundir, group)
                    if state != "done":
                        failed.add(group.unit.id)
                    progress.finished(group.unit, state, detail)
            if interrupts.signal is not None:
                self._stop(rundir, running, len(pending), progress)
                raise KeyboardInterrupt(signal.Signals(interrupts.signal).name)
        progress.close()

    def _start(self, rundir: RunDir, unit: Unit) -> _Group:
        """Fork the unit's worker, one per rank, and record them (pid and start time each;
        rank 0's is the record's job id). No rank inherits the launcher's own rank
        variables; a data-parallel unit's ranks meet at a port free now (a fresh rendezvous:
        never an earlier attempt's)."""
        world = self.profile.unit_ranks(unit).world
        base = {k: v for k, v in os.environ.items() if k not in RANK_ENV}
        base.update(FER_SCHEDULER="local", PYTHONUNBUFFERED="1")
        port = free_port() if world > 1 else 0
        processes: list[BaseProcess] = []
        for rank in range(world):
            env = dict(base)
            if world > 1:
                env.update(rank_env(rank, world, port, self.profile.collective_timeout_s))
            log_path = self._log(rundir, unit.id, rank)
            args = (str(rundir.path), unit.id, str(log_path), env, self.profile.threads_per_job)
            name = unit.id if world == 1 else f"{unit.id}.rank{rank}"
            process = worker_context().Process(target=run_forked, args=args, name=name)
            process.start()
            processes.append(process)
        ranks: list[RankProcess] = []
        for started in processes:
            assert started.pid is not None  # a started process has one
            ranks.append({"pid": started.pid, "start": process_start(started.pid)})
        record = Submission(
            backend=self.name, job_id=str(ranks[0]["pid"]), pid_start=ranks[0]["start"]
        )
        if world > 1:
            record["ranks"] = ranks
        rundir.record_submissions({unit.id: record})
        return _Group(unit, processes)

    def _log(self, rundir: RunDir, unit_id: str, rank: int) -> Path:
        """Rank `rank`'s output: the unit's log for rank 0, one beside it for the others."""
        if rank == 0:
            return rundir.unit_log(unit_id, self.name)
        return rundir.rank_log(unit_id, self.name, rank)

    @staticmethod
    def _reap(running: dict[str, _Group]) -> list[_Group]:
        """Wait up to POLL_S for a worker to end; the groups whose every rank has ended now
        (removed from `running`)."""
        sentinels = [s for group in running.values() for s in group.sentinels()]
        ended: set[object] = set(multiprocessing.connection.wait(sentinels, POLL_S))
        finished = []
        for unit_id, group in list(running.items()):
            group.reap(ended)
            group.enforce()
            if group.finished:
                del running[unit_id]
                finished.append(group)
        return finished

    def _ended(self, rundir: RunDir, group: _Group) -> tuple[str, str]:
        """A finished unit (every rank joined): done when its result is in the store,
        whatever the exit statuses say; stopped (nothing recorded) when Ctrl-C or SIGTERM
        ended it; else failed, with the worker's own reason or, when it recorded none, how
        it died. Of a data-parallel unit the first rank to end decides, and one killed by a
        signal is named as the cause, over what a surviving rank said of its loss."""
        unit, world = group.unit, len(group.processes)
        rank, code = group.first or (0, 0)
        who = f"rank {rank} of {world}" if world > 1 else ""
        if rundir.is_done(unit.id, unit.kind):
            detail = unit_summary(rundir, unit)
            if code != 0:  # the result is complete (`runs` is written last): keep it
                detail += f" ({who or 'its worker'} then exited with status {code})"
            return "done", detail
        if group.interrupted:
            if world > 1:  # a rank that lost a stopped peer may have called it a failure
                rundir.clear_failed(unit.id)
            how = signal.Signals(-code).name if -code in STOP_SIGNALS else "interrupted"
            return "stopped", f"{how}; a re-launch resumes it"
        log_path = self._log(rundir, unit.id, rank)
        reason = rundir.failure(unit.id)
        if reason is None or (world > 1 and code < 0):
            if code == 0:
                reason = f"the worker exited without recording a result; see {log_path}"
            else:
                reason = death_reason(code, log_path, who)
            with suppress(OSError, FerError):  # a full disk: the log has the cause
                rundir.mark_failed(unit.id, reason)
        return "failed", reason

    def _stop(
        self, rundir: RunDir, running: dict[str, _Group], left: int, progress: Progress
    ) -> None:
        """Interrupted: stop the running workers (a Ctrl-C reached them too), wait for them,
        and say what became of each: one that finished meanwhile is done, a stopped one
        records nothing."""
        for group in running.values():
            group.stop(interrupted=True)
        stopped = len(running)
        while running:
            for group in self._reap(running):
                progress.finished(group.unit, *self._ended(rundir, group))
        print(
            f"stopped: {stopped} running units stopped, {left} not started; "
            "a stopped unit is not a failure; `launch` again resumes",
            file=progress.stream,
            flush=True,
        )

    def _outside_blocker(self, rundir: RunDir, unit: Unit, by_id: dict[str, Unit]) -> str:
        """For dependencies outside this submission (still running from an earlier launch
        whose launcher died: its worker lives on): WAIT while one runs, a reason if one is
        neither running nor done, "" when all are done."""
        outside = [d for d in unit.deps if d not in by_id and not rundir.is_done(d)]
        if not outside:
            return ""
        alive = self.states(rundir)
        if any(d in alive for d in outside):
            return WAIT
        gone = [d for d in outside if not rundir.is_done(d)]  # it may have just finished
        return f"dependency {gone[0]} is neither done nor running" if gone else ""

    def states(self, rundir: RunDir) -> dict[str, State]:
        """Running: a unit any of whose worker processes (ranks) still runs."""
        return {
            unit_id: State.RUNNING
            for unit_id, record in rundir.submissions().items()
            if record.get("backend") == self.name and _live(record)
        }

    def cancel(self, rundir: RunDir) -> list[str]:
        """Stop the launch first (SIGTERM: it starts nothing more and stops its workers),
        then any worker still running (one a killed launcher left behind; every rank of a
        data-parallel unit). The pid in
        `launch.lock` is signalled only while that process holds the file open: a launcher
        killed by SIGKILL leaves its pid there, and the pid may be another process's now."""
        launcher = rundir.launcher()
        if launcher is not None and not has_open(launcher, rundir.path / "launch.lock"):
            launcher = None
        started = process_start(launcher) if launcher is not None else None
        if launcher is not None:
            with suppress(ProcessLookupError):
                os.kill(launcher, signal.SIGTERM)
        cancelled = []
        for unit_id in self.states(rundir):
            for pid in _live(rundir.submissions()[unit_id]):  # every rank, rank 0 first
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            cancelled.append(unit_id)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            launching = launcher is not None and process_start(launcher) == started
            if not launching and not self.states(rundir):
                break
            time.sleep(0.2)
        return cancelled
