"""Inside a Ray Tune trial: run one unit in a process forked from a preloaded server.

The Ray worker running a trial imports this module (the trainable is `run_unit_trial`), so it
imports nothing heavy: orchestrator.backends.local and orchestrator.run.worker bring the
store, TensorBoard and status modules (about a second of imports) that a trial needs only
when its unit dies; its forkserver loads them for the unit. That is also why the forkserver
context is built here rather than taken from orchestrator.backends.local.worker_context: the
same server, with two more modules preloaded.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import multiprocessing.connection
import os
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fer_core.ranks import RANK_ENV
from fer_core.runtime import PRELOAD
from orchestrator.plan.profiles import UnitRanks
from orchestrator.run.rundir import RunDir


def _metrics(rundir: RunDir, unit_id: str, state: str) -> dict[str, Any]:
    table = rundir.store.read("runs", {unit_id})
    accuracy = float(table.column("test_accuracy")[0].as_py()) if table is not None else math.nan
    return {"state": state, "test_accuracy": accuracy}


def trial_env(experiment: str) -> dict[str, str]:
    """The environment that names this Ray trial as the scheduler and job of the unit it runs
    (the `runs` row's `scheduler` and `job_id`, orchestrator.run.worker), for a launched
    unit and a tune trial split alike."""
    from ray import tune

    job_id = f"{experiment}/{tune.get_context().get_trial_id()}"
    return {"FER_SCHEDULER": "ray", "FER_JOB_ID": job_id}


def launcher_free(env: Mapping[str, str]) -> dict[str, str]:
    """`env` without what places a process in someone else's job: a SLURM allocation's
    `SLURM_*` (Ray started inside one, `tune --cluster slurm`: the unit's row would name that
    job as its scheduler) and a process group's rank variables (`fer_core.ranks.RANK_ENV`)."""
    return {k: v for k, v in env.items() if not k.startswith("SLURM_") and k not in RANK_ENV}


def run_unit_trial(config: dict[str, Any]) -> None:
    """The Tune function trainable: run one unit in a process forked from a preloaded server.

    The unit runs as the local backend runs it (orchestrator.run.worker.run_forked, in a
    process forked from a server that has torch loaded): the fresh state of a `python -m
    orchestrator.run.worker` process without its seconds of imports. The trial's actor is
    reused for the next unit of its wave, and its forkserver with it. The unit's output goes
    to units/<id>/ray.log. A unit of several ranks (`config["ranks"]`) runs as a Ray Train
    run instead (_run_ranks_trial).
    """
    from ray import tune

    unit_id, run_dir = config["unit_id"], config["run_dir"]
    rundir = RunDir(Path(run_dir))
    rundir.clear_failed(unit_id)  # a failed.json left now is this attempt's
    world, gpu = (config.get("ranks") or {}).get(unit_id, (1, False))
    if world > 1:
        _run_ranks_trial(config, rundir, UnitRanks(world=world, gpu=gpu))
        return
    log_path = rundir.unit_log(unit_id, "ray")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**launcher_free(os.environ), **trial_env(config["experiment"]), "PYTHONUNBUFFERED": "1"}
    threads = max(1, int(config.get("threads") or 1))
    args = (run_dir, unit_id, str(log_path), env, threads)
    service = config.get("fork_service")
    if service and service["host"] == socket.gethostname():
        code = _fork_in_launcher(service, args)
    else:  # another node than the launcher's: this worker's own server
        process = _forkserver().Process(target=_unit_process, args=args, name=unit_id)
        process.start()
        process.join()
        assert process.exitcode is not None  # a joined process has one
        code = process.exitcode
    if code == 0:
        tune.report(_metrics(rundir, unit_id, "done"))
        return
    reason = rundir.failure(unit_id)
    if reason is None:
        from orchestrator.run.worker import death_reason  # ~1 s of imports: only on this path

        # Killed (OOM, by hand) or crashed before it could record why: the one case where a
        # retry may succeed, so raise for Tune's FailureConfig; it resumes from last.pt.
        raise RuntimeError(death_reason(code, log_path))
    # Deterministic (bad data, NaN loss, CUDA OOM): end the trial as failed rather than
    # raise, which Tune would retry.
    tune.report({"state": "failed", "reason": reason, "test_accuracy": math.nan})


def _run_ranks_trial(config: dict[str, Any], rundir: RunDir, ranks: UnitRanks) -> None:
    """A unit of several ranks: a Ray Train run driven from this trial
    (orchestrator.backends.ray.train), its outcome told to Tune as a one-rank unit's is.

    A rank's process that died (or whose peers lost it) raises, for Tune's FailureConfig to
    retry from last.pt; whatever a surviving rank recorded about the lost peer is cleared, so
    the reason shown is Ray's, naming the rank. A rank's own error ends the trial as failed,
    with failed.json naming the rank where the ranks did not record it themselves.
    """
    from ray import tune

    from orchestrator.backends.ray.train import run_ranks

    unit_id = config["unit_id"]
    failure = run_ranks(config, ranks, trial_env(config["experiment"]))
    if failure is None:
        tune.report(_metrics(rundir, unit_id, "done"))
        return
    if failure.died:
        rundir.clear_failed(unit_id)
        with open(rundir.unit_log(unit_id, "ray"), "a") as log:  # the attempt's end, in its log
            print(f"ray train: {failure.reason}", file=log)
        raise RuntimeError(failure.reason)
    reason = rundir.failure(unit_id)
    if reason is None:
        rundir.mark_failed(unit_id, failure.reason)
        reason = failure.reason
    tune.report({"state": "failed", "reason": reason, "test_accuracy": math.nan})


def _forkserver() -> multiprocessing.context.ForkServerContext:
    """The forkserver units fork from, loading PRELOAD and the worker as the local backend's
    does, and also what a child of a Ray worker imports: Ray (multiprocessing re-runs the
    worker's main module, which imports it, in the child) and this module."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([*PRELOAD, "orchestrator.run.worker", "ray", __name__])
    return context


def start_forkserver() -> None:
    """Ray's worker_process_setup_hook for the backend's session: a trial's forkserver starts
    loading torch as its Ray worker starts, while the worker imports Tune and sets up the
    trial, instead of when the trial asks for its first unit."""
    import multiprocessing.forkserver

    _forkserver()
    multiprocessing.forkserver.ensure_running()


SETUP_HOOK = f"{__name__}.{start_forkserver.__name__}"


def _unit_process(run_dir: str, unit_id: str, log_path: str, env: dict, threads: int) -> None:
    """In the forked process: die with the process that asked for it (the trial's actor, or
    the launcher), then run the unit (run_forked).

    A forkserver's child outlives the process that asked for it; a stopped or killed trial
    (cancel, a lost actor) or a dead launcher must not leave its unit training. The parent
    sentinel closes when that process ends, however it ends.
    """
    import signal

    from orchestrator.run.worker import run_forked

    parent = multiprocessing.parent_process()

    def die_with_parent() -> None:
        assert parent is not None  # only started when there is one
        multiprocessing.connection.wait([parent.sentinel])
        os.kill(os.getpid(), signal.SIGTERM)

    if parent is not None:
        threading.Thread(target=die_with_parent, daemon=True).start()
    run_forked(run_dir, unit_id, log_path, env, threads)


def _fork_in_launcher(service: dict[str, str], args: tuple) -> int:
    """The unit forked by the launcher's ForkService; its exit status."""
    authkey = bytes.fromhex(service["authkey"])
    with multiprocessing.connection.Client(service["address"], authkey=authkey) as conn:
        conn.send(args)
        return int(conn.recv())


class ForkService:
    """In the launcher: forks the units of the trials on its host from its own forkserver.

    The server (orchestrator.backends.local.worker_context, torch preloaded) starts loading
    when the launch starts, while Ray starts, so the first units of a launch do not wait for
    a trial's own server to load; and one server serves every trial on this host, not one
    per actor. A trial sends its unit's arguments over a Unix socket (with an authkey) and
    gets the exit status back; if the trial goes first (stopped, killed), its unit is stopped.

    Each trial's unit is started and waited for on a thread of its own, so `children` keeps
    them from touching multiprocessing's child records at the same time: `Process.start()`
    polls every earlier child's exit status, a message read from a pipe, and a thread reading
    it while another does gets exit status 255 for a unit that finished (see
    orchestrator.backends.local, which starts and joins its workers on one thread).
    """

    def __init__(self) -> None:
        import multiprocessing.forkserver

        from orchestrator.backends.local import worker_context

        self.context = worker_context()
        multiprocessing.forkserver.ensure_running()
        self.authkey = os.urandom(32)
        self.listener = multiprocessing.connection.Listener(family="AF_UNIX", authkey=self.authkey)
        self.closed = False
        self.children = threading.Lock()  # held to start a unit or to read its exit status
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> dict[str, str]:
        """What a trial needs to reach this service (in its config)."""
        return {
            "host": socket.gethostname(),
            "address": str(self.listener.address),
            "authkey": self.authkey.hex(),
        }

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):  # wake the accept() for it to see `closed`
            multiprocessing.connection.Client(self.listener.address, authkey=self.authkey).close()
        self.thread.join()
        self.listener.close()

    def _serve(self) -> None:
        while not self.closed:
            try:
                conn = self.listener.accept()
            except (OSError, multiprocessing.AuthenticationError):
                continue
            if not self.closed:
                threading.Thread(target=self._fork, args=(conn,), daemon=True).start()

    def _fork(self, conn: multiprocessing.connection.Connection) -> None:
        with conn:
            try:
                args = conn.recv()
            except (EOFError, OSError):
                return
            process = self.context.Process(target=_unit_process, args=args, name=args[1])
            with self.children:
                process.start()
            multiprocessing.connection.wait([process.sentinel, conn])
            with self.children:
                if process.is_alive():  # the trial went first (stopped, killed): so does its unit
                    process.terminate()
                process.join()
            with contextlib.suppress(OSError):  # the trial may be gone
                conn.send(process.exitcode)
