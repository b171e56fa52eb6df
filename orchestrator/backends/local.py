"""The embedded default backend: units as processes on this machine, N at a time.

Each unit runs in its own process (a crash or a leak in one training cannot take the
launcher down), started as soon as its dependencies are done; `launch` blocks until all have
finished and prints progress as they do. The processes are forked from a server that loaded
torch once (multiprocessing's forkserver, preloading fer_core.runtime.PRELOAD): a fresh
`python -m orchestrator.run.worker` spends 3-6 s of a 2-core machine importing torch and
torch._dynamo, more than a small unit trains. A forked worker behaves as that command would
(same environment, log file, exit status; it outlives a killed launcher).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_any

from fer_core.errors import FerError
from fer_core.runtime import PRELOAD
from orchestrator.backends.base import Backend
from orchestrator.plan.profiles import LocalProfile
from orchestrator.plan.unit import Unit
from orchestrator.run.processes import process_start
from orchestrator.run.progress import Progress, unit_summary
from orchestrator.run.rundir import RunDir, Submission
from orchestrator.run.states import State
from orchestrator.run.worker import death_reason, run_forked

POLL_S = 1.0  # how often a unit waiting on another launch's worker looks again
WAIT = "wait"


def _alive(record: Submission) -> bool:
    """True while the worker process a submission record names still runs."""
    start = record.get("pid_start")
    return start is not None and process_start(int(record["job_id"])) == start


def worker_context() -> multiprocessing.context.ForkServerContext:
    """The forkserver that workers fork from; it loads PRELOAD when it first starts."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([*PRELOAD, "orchestrator.run.worker"])
    return context


class LocalBackend(Backend[LocalProfile]):
    name = "local"
    _start_lock = threading.Lock()  # submissions.json is read-modify-written per start

    def submit(self, rundir: RunDir, units: list[Unit], wait: bool = True) -> None:
        jobs = self.profile.jobs
        by_id = {unit.id: unit for unit in units}
        pending = list(units)
        failed: set[str] = set()
        running: dict[Future, Unit] = {}
        told: set[str] = set()  # units said to wait on a worker of an earlier launch
        progress = Progress(len(units))
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            while pending or running:
                for unit in list(pending):
                    if len(running) >= jobs:
                        break
                    if any(dep in failed for dep in unit.deps):
                        pending.remove(unit)
                        failed.add(unit.id)
                        progress.finished(unit, "blocked", "a dependency failed")
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
                    running[pool.submit(self._run_one, rundir, unit)] = unit
                if not running:
                    if not pending:
                        break
                    time.sleep(POLL_S)  # only units waiting on a worker of an earlier launch
                    continue
                finished, _ = wait_any(list(running), POLL_S, return_when=FIRST_COMPLETED)
                for future in finished:
                    unit = running.pop(future)
                    code = future.result()
                    if code == 0:
                        progress.finished(unit, "done", unit_summary(rundir, unit))
                    else:
                        failed.add(unit.id)
                        reason = rundir.failure(unit.id) or f"exit status {code}"
                        progress.finished(unit, "failed", reason)
        progress.close()

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

    def _run_one(self, rundir: RunDir, unit: Unit) -> int:
        log_path = rundir.unit_log(unit.id, self.name)
        env = {**os.environ, "FER_SCHEDULER": "local", "PYTHONUNBUFFERED": "1"}
        threads = self.profile.threads_per_job
        args = (str(rundir.path), unit.id, str(log_path), env, threads)
        process = worker_context().Process(target=run_forked, args=args, name=unit.id)
        with self._start_lock:
            process.start()
            pid = process.pid
            assert pid is not None  # a started process has one
            record = Submission(backend=self.name, job_id=str(pid), pid_start=process_start(pid))
            rundir.record_submissions({unit.id: record})
        process.join()
        code = process.exitcode
        assert code is not None  # a joined process has one
        if code != 0 and rundir.failure(unit.id) is None and not rundir.is_done(unit.id, unit.kind):
            with contextlib.suppress(OSError, FerError):  # a full disk: the log has the cause
                rundir.mark_failed(unit.id, death_reason(code, log_path))
        return code

    def states(self, rundir: RunDir) -> dict[str, State]:
        return {
            unit_id: State.RUNNING
            for unit_id, record in rundir.submissions().items()
            if record.get("backend") == self.name and _alive(record)
        }

    def cancel(self, rundir: RunDir) -> list[str]:
        cancelled = []
        for unit_id in self.states(rundir):
            pid = int(rundir.submissions()[unit_id]["job_id"])
            os.kill(pid, signal.SIGTERM)
            cancelled.append(unit_id)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.states(rundir):
            time.sleep(0.2)
        return cancelled
