"""`launch`: grid x profile -> DAG -> submit what is not done, not running and not queued.

Re-launching resumes: done units are skipped, active ones are left alone, failed ones (and
the units they blocked) are retried. Launching a finished grid is a no-op that says so.

Records first: the run dir's DAG and `profile.json` (which backend `status` and `cancel` ask)
are written before anything is submitted, so a launch killed during its first submission
leaves a run dir whose jobs `cancel` finds.

On a machine with `sbatch` on PATH (a login node), a local launch says in one line that it
trains here, and how to pick the cluster: the default stays local.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path
from typing import TextIO

from orchestrator.backends import make_backend
from orchestrator.plan.dag import summary
from orchestrator.plan.grid import Grid
from orchestrator.plan.overrides import GridPlan, Setting, expand_plan, load_grids
from orchestrator.plan.profiles import (
    LocalProfile,
    SlurmProfile,
    check_unit_ranks,
    load_profile,
    with_parallelism,
)
from orchestrator.plan.unit import Unit
from orchestrator.plan.weights import missing_weights, require_weights
from orchestrator.run.lineage import reset_stale, stale_units
from orchestrator.run.progress import LiveView
from orchestrator.run.rundir import RunDir
from orchestrator.run.states import ACTIVE, State
from orchestrator.run.status import unit_states


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
    settings: list[Setting] | None = None,
    seeds: list[int] | None = None,
    live: str = "auto",
    estimate_from: list[Path] | None = None,
) -> RunDir:
    """Validate everything, then submit the units that still need to run.

    `settings` (`--set KEY=VALUE`) override grid keys; a `KEY=a,b` sweep launches every point.
    `seeds` (from `--seeds`) replaces the grid's seed(s). A done unit whose lineage no
    longer holds (`orchestrator.run.lineage`) is cleared, with one line saying why, and runs
    again; so do its dependants. `live` ("auto": on a terminal, "on", "off") shows the live
    view while a local or Ray backend runs the units. `estimate_from`: earlier run dirs
    whose measured epochs a SLURM dry run's estimate may use (`--estimate-from`).
    """
    out = out or sys.stdout
    profile = load_profile(cluster, cluster_file)
    if isinstance(profile, LocalProfile) and shutil.which("sbatch"):
        print(
            f"note: training on this machine (--cluster {cluster}) although sbatch is on PATH; "
            "`--cluster slurm` (or another SLURM profile of cluster.yaml) submits to the cluster",
            file=out,
            flush=True,
        )
    if jobs is not None:
        profile = with_parallelism(profile, jobs)
    plan = load_grids(grid_name, data_roots, settings, seeds)
    grid = plan.grids[0]
    rundir = RunDir(run_dir or RunDir.default_path(grid.name))
    if dry_run:
        problems = list(dict.fromkeys(p for point in plan.grids for p in missing_weights(point)))
        digests = rundir.digest_cache()  # read, never saved: a dry run writes nothing
        units = expand_plan(plan, rundir.path, problems, digests=digests)
        check_unit_ranks(profile, units, f"--cluster {cluster}")
        stale = stale_units(rundir, units, digests)
        finished = {u.id for u in units if rundir.is_done(u.id, u.kind) and u.id not in stale}
        _print_plan(grid, plan, units, rundir, len(finished), out)
        for unit in units:
            if unit.id in stale:
                print(f"  would retrain {unit.name} ({unit.id}): {stale[unit.id]}", file=out)
        for problem in problems:
            print(f"  warning: {problem}", file=out)
        if isinstance(profile, SlurmProfile):
            from orchestrator.backends.slurm.plan import print_slurm_plan
            from orchestrator.run.epochcost import measured_epochs

            todo = [u for u in units if u.id not in finished]
            earlier = [RunDir(path).store for path in estimate_from or []]
            measured = measured_epochs([rundir.store, *earlier])
            print_slurm_plan(profile, rundir, todo, out, measured)
        return rundir
    digests = rundir.digest_cache()
    units = expand_plan(plan, rundir.path, digests=digests)
    check_unit_ranks(profile, units, f"--cluster {cluster}")
    for point in plan.grids:
        require_weights(point)
    backend = make_backend(profile)
    rundir.claim(grid.name, grid.path)
    with rundir.launch_lock():
        rundir.write_grid(plan.effective)
        rundir.write_dag(units)
        reset_stale(rundir, units, digests, out)
        digests.save()
        rundir.write_profile(cluster, cluster_file)
        states = unit_states(rundir, units, backend, digests)
        todo = [u for u in units if states[u.id] in (State.TODO, State.FAILED, State.BLOCKED)]
        done = sum(1 for s in states.values() if s == State.DONE)
        active = sum(1 for s in states.values() if s in ACTIVE)
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
        with _live_view(live, backend, rundir, out):
            backend.submit(rundir, todo, wait=wait)
    return rundir


def _live_view(live: str, backend, rundir: RunDir, out: TextIO):
    """The live view when asked for (or, with "auto", on a terminal) and the backend blocks
    while its units run (local, ray); a do-nothing context otherwise."""
    wanted = live == "on" or (live == "auto" and out is sys.stdout and sys.stdout.isatty())
    if wanted and backend.name in ("local", "ray") and out is sys.stdout:
        return LiveView(rundir, backend)
    return contextlib.nullcontext()


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _print_plan(
    grid: Grid, plan: GridPlan, units: list[Unit], rundir: RunDir, done: int, out: TextIO
) -> None:
    counts = summary(units)
    shared = sum(1 for u in units if u.kind == "train" and u.stage == 1 and _children(u, units))
    strategies = sum(len(u.strategies) for u in units)
    stages = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()) if k.startswith("stage"))
    print(f"grid {grid.name} ({grid.path})", file=out)
    if len(plan.points) > 1:
        swept = ", ".join(
            f"{key} x{len(values)}" for key, values in plan.effective["sweep"].items()
        )
        print(f"  {len(plan.points)} sweep points ({swept})", file=out)
    print(
        f"  {_plural(counts['prepare'], 'preparation job')} + "
        f"{_plural(counts['train'], 'training')} ({stages})",
        file=out,
    )
    print(
        f"  {strategies} strategy results; {shared} stage-1 trainings shared by "
        f"a stage-2 chain (trained once)",
        file=out,
    )
    print(f"  already done in {rundir.path}: {done}", file=out)
    print("  dry run: nothing submitted", file=out)


def _children(unit: Unit, units: list[Unit]) -> bool:
    return any(unit.id in other.deps for other in units)
