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
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from contextlib import suppress
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from fer_core.errors import FerError
from fer_core.runtime import PRELOAD
from orchestrator.backends.base import Backend
from orchestrator.plan.profiles import LocalProfile
from orchestrator.plan.unit import Unit
from orchestrator.run.processes import has_open, process_start
from orchestrator.run.progress import Progress, unit_summary
from orchestrator.run.rundir import RunDir, Submission
from orchestrator.run.states import State
from orchestrator.run.worker import death_reason, run_forked

POLL_S = 1.0  # how often a unit waiting on another launch's worker looks again
WAIT = "wait"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # a worker that died of one was interrupted


def _alive(record: Submission) -> bool:
    """True while the worker process a submission record names still runs."""
    start = record.get("pid_start")
    return start is not None and process_start(int(record["job_id"])) == start


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
        running: dict[str, tuple[Unit, BaseProcess]] = {}  # by unit id
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
                    running[unit.id] = (unit, self._start(rundir, unit))
                if not running:
                    if pending:
                        time.sleep(POLL_S)  # only units waiting on a worker of an earlier launch
                    continue
                sentinels = [process.sentinel for _, process in running.values()]
                ended = set(multiprocessing.connection.wait(sentinels, POLL_S))
                for unit, process in list(running.values()):
                    if process.sentinel in ended:
                        del running[unit.id]
                        state, detail = self._ended(rundir, unit, process)
                        if state != "done":
                            failed.add(unit.id)
                        progress.finished(unit, state, detail)
            if interrupts.signal is not None:
                self._stop(rundir, running, len(pending), progress)
                raise KeyboardInterrupt(signal.Signals(interrupts.signal).name)
        progress.close()

    def _start(self, rundir: RunDir, unit: Unit) -> BaseProcess:
        """Fork the unit's worker and record it (pid and start time: one process)."""
        log_path = rundir.unit_log(unit.id, self.name)
        env = {**os.environ, "FER_SCHEDULER": "local", "PYTHONUNBUFFERED": "1"}
        threads = self.profile.threads_per_job
        args = (str(rundir.path), unit.id, str(log_path), env, threads)
        process = worker_context().Process(target=run_forked, args=args, name=unit.id)
        process.start()
        pid = process.pid
        assert pid is not None  # a started process has one
        record = Submission(backend=self.name, job_id=str(pid), pid_start=process_start(pid))
        rundir.record_submissions({unit.id: record})
        return process

    def _ended(self, rundir: RunDir, unit: Unit, process: BaseProcess) -> tuple[str, str]:
        """A finished worker's unit: done when its result is in the store, whatever the exit
        status says; stopped (nothing recorded) when Ctrl-C or SIGTERM ended it; else
        failed, with the worker's own reason or, when it recorded none, how it died."""
        process.join()
        code = process.exitcode
        assert code is not None  # a joined process has one
        if rundir.is_done(unit.id, unit.kind):
            detail = unit_summary(rundir, unit)
            if code != 0:  # the result is complete (`runs` is written last): keep it
                detail += f" (its worker then exited with status {code})"
            return "done", detail
        if -code in STOP_SIGNALS:
            return "stopped", f"{signal.Signals(-code).name}; a re-launch resumes it"
        log_path = rundir.unit_log(unit.id, self.name)
        reason = rundir.failure(unit.id)
        if reason is None:
            if code == 0:
                reason = f"the worker exited without recording a result; see {log_path}"
            else:
                reason = death_reason(code, log_path)
            with suppress(OSError, FerError):  # a full disk: the log has the cause
                rundir.mark_failed(unit.id, reason)
        return "failed", reason

    def _stop(
        self,
        rundir: RunDir,
        running: dict[str, tuple[Unit, BaseProcess]],
        left: int,
        progress: Progress,
    ) -> None:
        """Interrupted: stop the running workers (a Ctrl-C reached them too), wait for them,
        and say what became of each: one that finished meanwhile is done, a stopped one
        records nothing."""
        for _, process in running.values():
            process.terminate()
        for unit, process in running.values():
            progress.finished(unit, *self._ended(rundir, unit, process))
        print(
            f"stopped: {len(running)} running units stopped, {left} not started; "
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
        return {
            unit_id: State.RUNNING
            for unit_id, record in rundir.submissions().items()
            if record.get("backend") == self.name and _alive(record)
        }

    def cancel(self, rundir: RunDir) -> list[str]:
        """Stop the launch first (SIGTERM: it starts nothing more and stops its workers),
        then any worker still running (one a killed launcher left behind). The pid in
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
            with suppress(ProcessLookupError):
                os.kill(int(rundir.submissions()[unit_id]["job_id"]), signal.SIGTERM)
            cancelled.append(unit_id)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            launching = launcher is not None and process_start(launcher) == started
            if not launching and not self.states(rundir):
                break
            time.sleep(0.2)
        return cancelled
