"""Helpers of the fault-injection suite: a small study on the session's CK+ twin, the real CLI
as a subprocess, polling, and the end-state check every case ends with."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.plan.unit import Unit
from orchestrator.run.rundir import RunDir
from tests.conftest import REPO, small_grid

CROP = 48  # slow enough (~1 s/epoch on a CPU core) to catch a unit mid-run, fast to finish


def study_grid(root: Path, strategies: str = "[ce]", name: str = "faults", **kwargs: Any) -> str:
    """The text of a small grid on the twin at `root` (one fold, tiny CNN at CROP px)."""
    return small_grid(name=name, strategies=strategies, root=root, crop=CROP, **kwargs)


def roles(units: list[Unit]) -> dict[str, Unit]:
    """'prepare', 's1f1', 's2f1', ... for the units of a study grid."""
    return {("prepare" if u.kind == "prepare" else f"s{u.stage}f{u.fold}"): u for u in units}


# --- the real CLI ---------------------------------------------------------------------------
def cli_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **extra}


def cli(*args: str, cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """`python -m orchestrator ARGS` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(**env),
    )


class Background:
    """`python -m orchestrator ARGS` in its own session (so its workers can be killed with it);
    output goes to files, never to a pipe that could fill up."""

    def __init__(self, *args: str, cwd: Path, name: str = "bg"):
        self.out_path = cwd / f"{name}.out"
        self.err_path = cwd / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", *map(str, args)],
                cwd=cwd,
                stdout=out,
                stderr=err,
                env=cli_env(),
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            pytest.fail(f"launch did not finish within {timeout:.0f}s:\n{self.output()}")

    def output(self) -> str:
        return self.out_path.read_text(errors="replace") + self.err_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def kill_group(self) -> None:
        """SIGKILL the launcher and every worker it started (they share its session)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)


# --- polling --------------------------------------------------------------------------------
def wait_until(predicate, timeout: float, what: str, interval: float = 0.1, explain=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(
        f"timed out after {timeout:.0f}s waiting for {what}" + (explain() if explain else "")
    )


def epochs_done(rundir: RunDir, unit_id: str) -> int:
    """Epochs the unit's trainer reported done (progress.json), 0 before the first."""
    try:
        return int(json.loads((rundir.work_dir(unit_id) / "progress.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def alive(pid: int) -> bool:
    """A live, non-zombie process (PID 1 here reaps slowly)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


# --- the end state every case checks ---------------------------------------------------------
def assert_grid_done_once(rundir: RunDir, epochs: int | dict[str, int]) -> dict[str, dict]:
    """Every unit of the run's DAG is done exactly once: one prepare row per data unit, one
    runs row per training, its epochs 1..E once each, one prediction per test image.
    Returns the runs rows by unit id."""
    units = rundir.read_dag()
    train = [u for u in units if u.kind == "train"]
    prepare = rundir.store.read("prepare")
    assert prepare is not None
    assert sorted(prepare.column("unit_id").to_pylist()) == sorted(
        u.id for u in units if u.kind == "prepare"
    )
    runs = rundir.store.read("runs").to_pylist()
    assert sorted(r["unit_id"] for r in runs) == sorted(u.id for u in train), "runs rows"
    by_unit = {r["unit_id"]: r for r in runs}
    for unit in train:
        want = epochs if isinstance(epochs, int) else epochs[unit.id]
        rows = rundir.store.read("epochs", {unit.id}).to_pylist()
        assert [r["epoch"] for r in rows] == list(range(1, want + 1)), unit.name
        predictions = rundir.store.read("predictions", {unit.id})
        assert predictions is not None and predictions.num_rows == by_unit[unit.id]["n_test"]
        assert len(set(predictions.column("image_id").to_pylist())) == predictions.num_rows
    return by_unit


def temp_files(folder: Path) -> list[Path]:
    """Leftover temp files of unfinished atomic writes under `folder`."""
    return sorted(folder.rglob(".tmp-*"))


def prepare_run(grid: Path, run: Path) -> tuple[RunDir, dict[str, Unit]]:
    """Claim `run` for `grid` and write its DAG (what launch does before submitting)."""
    from orchestrator.plan.dag import expand
    from orchestrator.plan.grid import load_grid

    loaded = load_grid(str(grid))
    units = expand(loaded, run)
    rundir = RunDir(run)
    rundir.claim(loaded.name, grid)
    rundir.write_dag(units)
    return rundir, roles(units)
