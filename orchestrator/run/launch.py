"""`launch`: grid x profile -> DAG -> submit what is not done, not running and not queued.

Re-launching resumes: done units are skipped, active ones are left alone, failed ones (and
the units they blocked) are retried. Launching a finished grid is a no-op that says so.

Records first: the run dir's DAG and `profile.json` (which backend `status` and `cancel` ask)
are written before anything is submitted, so a launch killed during its first submission
leaves a run dir whose jobs `cancel` finds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from fer_core.errors import FerError
from fer_core.io import atomic_write_text
from orchestrator.backends import make_backend
from orchestrator.plan.dag import Unit, expand, summary
from orchestrator.plan.grid import Grid, load_grid
from orchestrator.plan.profiles import load_profile
from orchestrator.run import states as st
from orchestrator.run.rundir import RunDir

DEFAULT_RUNS = Path("runs")


def default_run_dir(grid: Grid) -> Path:
    return DEFAULT_RUNS / grid.name


def launch(
    grid_name: str,
    cluster: str = "local",
    run_dir: Path | None = None,
    jobs: int | None = None,
    dry_run: bool = False,
    wait: bool = False,
    data_roots: dict[str, str] | None = None,
    cluster_file: Path | None = None,
    out: TextIO | None = None,
) -> RunDir:
    """Validate everything, then submit the units that still need to run."""
    out = out or sys.stdout
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise FerError(f"--jobs {jobs!r}: must be an integer >= 1")
    profile = load_profile(cluster, cluster_file)
    if jobs is not None:
        profile["jobs" if profile["backend"] == "local" else "array_parallelism"] = jobs
    grid = load_grid(grid_name, data_roots)
    rundir = RunDir(run_dir or default_run_dir(grid))
    if dry_run:
        problems: list[str] = []
        units = expand(grid, rundir.path, problems)
        _print_plan(grid, units, rundir, out)
        for problem in problems:
            print(f"  warning: {problem}", file=out)
        if profile["backend"] == "slurm":
            from orchestrator.backends.slurm.plan import print_slurm_plan

            done = rundir.store.done_ids("train") | rundir.store.done_ids("prepare")
            print_slurm_plan(profile, rundir, [u for u in units if u.id not in done], out)
        return rundir
    units = expand(grid, rundir.path)
    backend = make_backend(profile)
    rundir.claim(grid.name, grid.path)
    with rundir.launch_lock():
        rundir.write_dag(units)
        save_profile(rundir, cluster, cluster_file)
        states = st.unit_states(rundir, units, backend)
        todo = [u for u in units if states[u.id] in (st.TODO, st.FAILED_STATE, st.BLOCKED)]
        done = sum(1 for s in states.values() if s == st.DONE)
        active = sum(1 for s in states.values() if s in (st.RUNNING, st.PENDING))
        if not todo:
            print(
                f"nothing to submit: {done} of {len(units)} units done, {active} active "
                f"({rundir.path})",
                file=out,
            )
            return rundir
        for unit in todo:
            rundir.clear_failed(unit.id)
        print(
            f"{grid.name}: submitting {len(todo)} units to {backend.name} "
            f"({done} done, {active} active) in {rundir.path}",
            file=out,
            flush=True,
        )
        backend.submit(rundir, todo, wait=wait)
    return rundir


def save_profile(rundir: RunDir, cluster: str, cluster_file: Path | None) -> None:
    """`profile.json`: the profile this run dir was launched with, for `status` and `cancel`."""
    body = {
        "cluster": cluster,
        "cluster_file": str(Path(cluster_file).resolve()) if cluster_file else None,
    }
    atomic_write_text(rundir.path / "profile.json", json.dumps(body))


def _print_plan(grid: Grid, units: list[Unit], rundir: RunDir, out: TextIO) -> None:
    counts = summary(units)
    shared = sum(1 for u in units if u.kind == "train" and u.stage == 1 and _children(u, units))
    strategies = sum(len(u.strategies) for u in units)
    done = rundir.store.done_ids("train") | rundir.store.done_ids("prepare")
    stages = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()) if k.startswith("stage"))
    print(f"grid {grid.name} ({grid.path})", file=out)
    print(
        f"  {counts['prepare']} preparation jobs + {counts['train']} trainings ({stages})", file=out
    )
    print(
        f"  {strategies} strategy results; {shared} stage-1 trainings shared by "
        f"a stage-2 chain (trained once)",
        file=out,
    )
    print(f"  already done in {rundir.path}: {sum(1 for u in units if u.id in done)}", file=out)
    print("  dry run: nothing submitted", file=out)


def _children(unit: Unit, units: list[Unit]) -> bool:
    return any(unit.id in other.deps for other in units)
