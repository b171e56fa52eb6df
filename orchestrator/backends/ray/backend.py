"""The Ray backend: units as Ray Tune trials, the DAG run in waves.

Tune trials cannot wait on one another, so the DAG runs as waves: wave k holds the units
whose dependencies all finished in earlier waves (data preparation, then stage 1, then
stage 2, ...), and each wave is one `tune.Tuner` grid over its unit ids. A unit whose
dependency failed is reported blocked and not submitted; a done unit is never submitted.

Units. A trial runs its unit in a process of its own, forked from a server that has torch
loaded (orchestrator.backends.ray.trial): on the launcher's host, the launcher's own server,
which loads while Ray starts; on another node, one the trial's worker starts as it starts.
The actor serves the next unit of the wave. A unit pays a fork, not an interpreter's
start-up and imports. A training unit of several ranks (`procs_per_unit`, `gpus_per_unit`)
runs instead as a Ray Train run that its trial drives, one Ray Train worker per rank, each
rank's output in units/<id>/ray.rank<r>.log beside rank 0's ray.log
(orchestrator.backends.ray.train); stage 2 still waits for its wave and starts from its
parent's best.

Failures. A unit that fails (bad data, NaN loss, CUDA OOM: deterministic, a retry would
fail again) has written its reason to units/<id>/failed.json, and its trial ends with
`state: failed` in the trial's result instead of raising, because Tune retries every error
alike. A unit whose process died without a reason (killed, OOM-killed), or whose trial's
process died (node lost), is what Tune's `FailureConfig(max_failures)` retries (profile key
`max_failures`, default 2), and fer_core resumes it from the unit's last.pt in its work dir.
So for a unit of several ranks: a rank's own error fails it (the reason names the rank), a
rank's process that died is retried by Tune.

Lifetime. A local Ray (address: null) lives only as long as the launcher, so `launch` blocks
until the waves finish, printing one line per finished unit. The launcher keeps
RUN_DIR/ray/launcher.json (its pid and the states of its units) so that `status` from another
shell can show them running/pending and `cancel` can ask it to stop; once the launcher is
gone nothing of this run is left on Ray, so `states` returns {} and `cancel` returns [].
Tune's own records are under RUN_DIR/ray/<launch>-w<k>/<unit id>/; a unit's output goes to
units/<id>/ray.log. On a multi-node cluster RUN_DIR must be on a shared file system.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from fer_core.errors import FerError
from fer_core.io import atomic_write_text
from orchestrator.backends.base import Backend
from orchestrator.backends.ray.cluster import check_fits, ray_session
from orchestrator.backends.ray.train import DRIVER_RESOURCES, concurrent_units
from orchestrator.backends.ray.trial import SETUP_HOOK, ForkService, run_unit_trial
from orchestrator.plan.profiles import RayProfile, UnitRanks
from orchestrator.plan.unit import Unit
from orchestrator.run.processes import process_start
from orchestrator.run.progress import Progress, unit_summary
from orchestrator.run.rundir import RunDir, Submission
from orchestrator.run.states import State

LAUNCHER_FILE = "launcher.json"
CANCEL_FILE = "cancel-requested"
CANCEL_WAIT_S = 60.0


# --- the launcher's record (for status and cancel from other shells) --------------------------


class LauncherRecord:
    """RUN_DIR/ray/launcher.json: this launcher's pid and its units' scheduler states."""

    def __init__(self, rundir: RunDir):
        self.path = rundir.ray_dir / LAUNCHER_FILE
        self.active: dict[str, str] = {}

    def open(self, unit_ids: list[str]) -> None:
        self.active = dict.fromkeys(unit_ids, State.PENDING)
        self._write()

    def set(self, unit_id: str, state: str | None) -> None:
        if state is None:
            self.active.pop(unit_id, None)
        else:
            self.active[unit_id] = state
        self._write()

    def close(self) -> None:
        self.active = {}
        self._write()

    def _write(self) -> None:
        body = {
            "pid": os.getpid(),
            "pid_start": process_start(os.getpid()),
            "host": socket.gethostname(),
            "active": self.active,
        }
        atomic_write_text(self.path, json.dumps(body, indent=1))

    @staticmethod
    def read_live(rundir: RunDir) -> dict[str, Any] | None:
        """The record if its launcher still runs (on this host), else None."""
        path = rundir.ray_dir / LAUNCHER_FILE
        try:
            body = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if body.get("host") != socket.gethostname():
            return None  # another machine's launcher: its /proc is not ours to read
        if process_start(int(body["pid"])) != body.get("pid_start"):
            return None  # gone, or the pid was reused
        return body


# --- the driver side ------------------------------------------------------------------------


def wave_numbers(units: list[Unit]) -> dict[str, int]:
    """unit id -> wave (1-based): one after the latest of its dependencies in `units`."""
    waves: dict[str, int] = {}
    for unit in units:  # topological order
        waves[unit.id] = 1 + max((waves[d] for d in unit.deps if d in waves), default=0)
    return waves


class RayBackend(Backend[RayProfile]):
    name = "ray"

    # The interface ---------------------------------------------------------------------------
    def submit(self, rundir: RunDir, units: list[Unit], wait: bool = True) -> None:
        """Run `units` wave by wave; blocks (`wait` is moot: Ray lives as long as we do)."""
        cancel_path = rundir.ray_dir / CANCEL_FILE
        cancel_path.unlink(missing_ok=True)
        waves = wave_numbers(units)
        by_id = {unit.id: unit for unit in units}
        stamp = time.strftime("%Y%m%d-%H%M%S")
        progress = Progress(len(units))
        failed: set[str] = set()
        launcher = LauncherRecord(rundir)
        launcher.open([u.id for u in units])
        interrupted: list[Unit] = []
        service = ForkService()  # its server loads torch while Ray starts
        # Trials off this host fork from their worker's own server, started with the worker.
        hook = SETUP_HOOK if self.profile.address else None
        try:
            with ray_session(self.profile, setup_hook=hook) as resources:
                widest = max((self.profile.unit_ranks(u) for u in units), key=_width, default=None)
                check_fits(self.profile, resources, "ray profile", widest or UnitRanks())
                for wave in range(1, max(waves.values(), default=0) + 1):
                    ready = []
                    for unit in (u for u in units if waves[u.id] == wave):
                        if interrupted or cancel_path.exists():
                            interrupted.append(unit)
                            continue
                        blocker = self._blocker(rundir, unit, by_id, failed)
                        if blocker:
                            failed.add(unit.id)
                            launcher.set(unit.id, None)
                            progress.finished(unit, "blocked", blocker)
                        elif rundir.is_done(unit.id, unit.kind):  # never submit a done unit
                            launcher.set(unit.id, None)
                            progress.finished(unit, "done", "already done")
                        else:
                            ready.append(unit)
                    if ready:
                        experiment = f"{stamp}-w{wave}"
                        interrupted += self._run_wave(
                            rundir,
                            ready,
                            experiment,
                            progress,
                            failed,
                            launcher,
                            service,
                            resources,
                        )
        finally:
            service.close()
            launcher.close()
            cancel_path.unlink(missing_ok=True)
        progress.close()
        if interrupted:
            raise FerError(
                f"{rundir.path}: the Ray launch was cancelled or interrupted; "
                f"{len(interrupted)} units did not finish (their checkpoints are kept): "
                "launch again to resume"
            )

    def states(self, rundir: RunDir) -> dict[str, State]:
        """The states its launcher reports while it runs; {} once it is gone (Ray went too)."""
        record = LauncherRecord.read_live(rundir)
        return dict(record["active"]) if record else {}

    def cancel(self, rundir: RunDir) -> list[str]:
        """Ask a running launcher to stop its trials; [] once it is gone (nothing runs then).

        The launcher's Tune stopper sees RUN_DIR/ray/cancel-requested, stops the running
        trials (their last.pt stays: a re-launch resumes) and submits no further wave.
        """
        record = LauncherRecord.read_live(rundir)
        if not record or not record["active"]:
            return []
        active = list(record["active"])
        atomic_write_text(rundir.ray_dir / CANCEL_FILE, str(time.time()))
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline and self.states(rundir):
            time.sleep(0.5)
        return active

    # Waves -----------------------------------------------------------------------------------
    @staticmethod
    def _blocker(rundir: RunDir, unit: Unit, by_id: dict[str, Unit], failed: set[str]) -> str:
        for dep in unit.deps:
            if dep in failed:
                return "a dependency failed"
            if not rundir.is_done(dep, by_id[dep].kind if dep in by_id else None):
                return f"dependency {dep} is not done"
        return ""

    def _run_wave(
        self,
        rundir: RunDir,
        ready: list[Unit],
        experiment: str,
        progress: Progress,
        failed: set[str],
        launcher: LauncherRecord,
        service: ForkService,
        resources: dict[str, float],
    ) -> list[Unit]:
        """One Tuner over `ready`; returns the units that did not finish (cancelled).

        A unit of several ranks is a Ray Train run driven by its trial (`config["ranks"]`
        names them; orchestrator.backends.ray.train): its trial holds DRIVER_RESOURCES, its
        workers what the profile gives a rank, and the wave runs no more such trials at once
        than the cluster fits.
        """
        from ray import tune
        from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

        profile = self.profile
        widths = {unit.id: profile.unit_ranks(unit) for unit in ready}
        multi = {uid: ranks for uid, ranks in widths.items() if ranks.world > 1}
        rundir.record_submissions(
            {
                unit.id: Submission(
                    backend=self.name,
                    job_id=f"ray:{experiment}/{unit.id}",
                    launcher_pid=os.getpid(),
                )
                for unit in ready
            }
        )
        cancel_path = rundir.ray_dir / CANCEL_FILE
        callback = _unit_callback(rundir, {u.id: u for u in ready}, progress, failed, launcher)
        trial_resources = {
            uid: DRIVER_RESOURCES if uid in multi else profile.resources_per_trial for uid in widths
        }
        tuner = tune.Tuner(
            tune.with_resources(run_unit_trial, partial(_trial_resources, trial_resources)),
            param_space={
                "unit_id": tune.grid_search([u.id for u in ready]),
                "run_dir": str(rundir.path),
                "experiment": experiment,
                "threads": max(1, int(profile.cpus_per_trial)),
                "fork_service": service.endpoint,
                "ranks": {uid: [ranks.world, ranks.gpu] for uid, ranks in multi.items()},
                "train": {
                    "cpus_per_rank": profile.cpus_per_trial,
                    "collective_timeout_s": profile.collective_timeout_s,
                },
            },
            tune_config=tune.TuneConfig(
                max_concurrent_trials=concurrent_units(profile, resources, list(widths.values())),
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_name,
                reuse_actors=profile.reuse_actors,
            ),
            run_config=tune.RunConfig(
                name=experiment,
                storage_path=str(rundir.ray_dir),
                failure_config=tune.FailureConfig(max_failures=profile.max_failures),
                stop=_cancel_stopper(cancel_path),
                callbacks=[callback, CSVLoggerCallback(), JsonLoggerCallback()],
                verbose=0,
            ),
        )
        with _quiet_tune():
            tuner.fit()
        return [u for u in ready if u.id not in callback.finished]


# Tune's environment for a wave: the old output engine (silent at verbose=0) and no default
# logger callbacks, whose TensorBoard one imports tensorboardX and with it torch into the
# launcher (seconds before the first trial starts). The CSV and JSON ones are passed
# explicitly; the units' TensorBoard scalars are orchestrator.run.tblog's.
TUNE_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}


@contextmanager
def _quiet_tune() -> Iterator[None]:
    """Our progress lines instead of Tune's tables and tracebacks (failed.json has reasons)."""
    import logging

    previous = {key: os.environ.get(key) for key in TUNE_ENV}
    os.environ.update(TUNE_ENV)
    tune_logger = logging.getLogger("ray.tune")
    level = tune_logger.level
    tune_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        tune_logger.setLevel(level)
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _width(ranks: UnitRanks) -> tuple[bool, int]:
    """The order of a unit's ranks by what they take: GPU units over CPU ones, then count."""
    return ranks.gpu, ranks.world


def _trial_resources(by_unit: dict[str, dict[str, float]], config: dict[str, Any]) -> Any:
    """What the trial of `config["unit_id"]` holds (Tune's per-trial resources callable)."""
    from ray.tune.execution.placement_groups import resource_dict_to_pg_factory

    return resource_dict_to_pg_factory(by_unit[config["unit_id"]])


def _trial_name(trial: Any) -> str:
    return str(trial.config["unit_id"])


def _trial_error(trial: Any) -> str:
    """The last line of a trial's error file (the exception), or a generic reason."""
    try:
        lines = [line for line in Path(trial.error_file).read_text().splitlines() if line.strip()]
    except (OSError, TypeError):
        lines = []
    if not lines:
        return "ray trial failed"
    last = lines[-1].split(" Some common causes")[0].strip()  # Ray's generic advice follows
    return f"ray trial failed after {trial.num_failures} tries: {last[:240]}"


def _cancel_stopper(path: Path) -> Any:
    """A Tune stopper that stops every trial of the wave once `cancel` left its request."""
    from ray import tune

    class CancelStopper(tune.Stopper):
        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            return False

        def stop_all(self) -> bool:
            return path.exists()

    return CancelStopper()


def _unit_callback(
    rundir: RunDir,
    units: dict[str, Unit],
    progress: Progress,
    failed: set[str],
    launcher: LauncherRecord,
) -> Any:
    """Driver-side Tune callback: launcher states and a progress line per finished unit.

    Tune is imported here, not at module level: `status` and `cancel` read launcher.json
    without paying for a Ray import.
    """
    from ray import tune

    class UnitCallback(tune.Callback):
        def __init__(self) -> None:
            self.finished: set[str] = set()

        def __reduce__(self):
            # Tune pickles its run config into the experiment dir (for Tuner.restore); this
            # callback holds the launcher's stream and state, so it is saved as a no-op one.
            return (tune.Callback, ())

        def on_trial_start(self, iteration, trials, trial, **info):
            launcher.set(trial.config["unit_id"], State.RUNNING)

        def on_trial_recover(self, iteration, trials, trial, **info):
            unit = units[trial.config["unit_id"]]
            print(
                f"  retrying {unit.name}: its trial process died "
                f"(retry {trial.num_failures} of {trial.max_failures})",
                file=progress.stream,
                flush=True,
            )

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._finish(trial, errored=False)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._finish(trial, errored=True)

        def _finish(self, trial, errored: bool) -> None:
            unit = units[trial.config["unit_id"]]
            if unit.id in self.finished:
                return
            launcher.set(unit.id, None)
            if rundir.is_done(unit.id, unit.kind):
                self.finished.add(unit.id)
                progress.finished(unit, "done", unit_summary(rundir, unit))
                return
            result = trial.last_result or {}
            if not errored and result.get("state") != "failed":
                return  # stopped (cancel, Ctrl+C) before it finished: a re-launch resumes it
            self.finished.add(unit.id)
            reason = rundir.failure(unit.id)
            if reason is None:  # the process died, or failed before worker.run could record
                reason = result.get("reason") or _trial_error(trial)
                rundir.mark_failed(unit.id, reason)
            failed.add(unit.id)
            progress.finished(unit, "failed", reason)

    return UnitCallback()
