"""Per-unit overhead of each backend on this machine: submit -> unit start.

    .venv/bin/python bench/backend_overhead.py [--backends local,slurm,ray] [--units 2]

For each backend, a few one-epoch units of the tiny CNN (one fold each, in parallel on
this machine's cores) are launched into one run dir, and for each unit the time from its
submission (the job id recorded in submissions.json) to the start of `run_unit` (imports
done, data not yet loaded) is read back, with the unit's own start-up figure (process start
-> first training step, from `runs`) and its training time. The baseline, run first in the
same process, is the same units as fresh `python -m orchestrator.run.worker RUN_DIR UNIT`
processes: what a SLURM job runs, and what the local backend ran before it forked its
workers from a pre-loaded server. `slurm` needs the one-node SLURM of
scripts/local_slurm.sh (profile `slurm-local`); a backend that cannot start is reported
and skipped. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from fer_core.errors import FerError
from orchestrator.plan.dag import expand
from orchestrator.plan.grid import load_grid
from orchestrator.run.launch import launch
from orchestrator.run.rundir import RunDir

REPO = Path(__file__).resolve().parent.parent
PROFILES = {"local": "local", "slurm": "slurm-local", "ray": "ray"}


def _grid(tmp: Path, seed: int, units: int) -> str:
    """The demo grid cut to `units` one-epoch `ce` trainings; the seed makes their ids new."""
    raw = yaml.safe_load((REPO / "jobs" / "demo.yaml").read_text())
    raw.update(
        name="overhead",
        seed=seed,
        folds=list(range(1, units + 1)),
        experiments=[{"backbones": ["tiny"], "strategies": ["ce"]}],
        train={**raw["train"], "epochs": 1, "lr_step_epoch": 1},
    )
    raw.pop("stages", None)
    path = tmp / f"grid-{seed}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _train_units(rundir: RunDir, grid_path: str) -> list[str]:
    names = {u.id for u in expand(load_grid(grid_path), rundir.path) if u.kind == "train"}
    return sorted(names)


def _figures(rundir: RunDir, unit_ids: list[str], submitted: dict[str, float]) -> dict:
    runs = {r["unit_id"]: r for r in rundir.store.read("runs").to_pylist()}
    missing = [u for u in unit_ids if u not in runs]
    if missing:
        raise FerError(f"unit {missing[0]} has no result; see {rundir.unit_dir(missing[0])}")
    rows = [runs[u] for u in unit_ids]
    return {
        "submit_to_start": statistics.mean(r["started_at"] - submitted[r["unit_id"]] for r in rows),
        "startup": statistics.mean(r["startup_seconds"] for r in rows),
        "train": statistics.mean(r["train_seconds"] for r in rows),
    }


def _baseline(rundir: RunDir, grid_path: str) -> dict:
    """The units as fresh `python -m orchestrator.run.worker` processes, all at once."""
    grid = load_grid(grid_path)
    units = expand(grid, rundir.path)
    rundir.write_dag(units)
    unit_ids = _train_units(rundir, grid_path)
    submitted, processes = {}, []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as the local profile's threads_per_job
    for unit_id in unit_ids:
        submitted[unit_id] = time.time()
        argv = [sys.executable, "-m", "orchestrator.run.worker", str(rundir.path), unit_id]
        processes.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, env=env))
    if any(p.wait() != 0 for p in processes):
        raise FerError("a baseline worker failed")
    return _figures(rundir, unit_ids, submitted)


def _backend(rundir: RunDir, grid_path: str, backend: str, units: int) -> dict:
    launch(
        grid_path,
        cluster=PROFILES[backend],
        run_dir=rundir.path,
        jobs=units,
        wait=True,
        cluster_file=REPO / "cluster.yaml",
        out=io.StringIO(),
    )
    unit_ids = _train_units(rundir, grid_path)
    records = rundir.submissions()
    return _figures(rundir, unit_ids, {u: records[u]["submitted_at"] for u in unit_ids})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="local,slurm,ray")
    parser.add_argument("--units", type=int, default=2, help="units per backend, in parallel")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        rundir = RunDir(tmp_path / "run")
        # Warm-up: the data-preparation unit and one training, so that no figure below
        # includes generating the synthetic twin or a cold file cache.
        launch(_grid(tmp_path, 0, 1), run_dir=rundir.path, out=io.StringIO())
        results = {"fresh process (baseline)": _baseline(rundir, _grid(tmp_path, 1, args.units))}
        for seed, backend in enumerate(args.backends.split(","), start=2):
            try:
                results[backend] = _backend(
                    rundir, _grid(tmp_path, seed, args.units), backend, args.units
                )
            except (FerError, OSError) as exc:
                print(f"{backend}: skipped ({exc})")
        base = results["fresh process (baseline)"]["submit_to_start"]
        print(f"{args.units} one-epoch tiny units per backend, in parallel; seconds per unit:")
        header = ("backend", "submit->start", "start-up", "train", "vs baseline")
        print("{:<26} {:>13} {:>9} {:>7} {:>12}".format(*header))
        for name, fig in results.items():
            ratio = fig["submit_to_start"] / base
            print(
                f"{name:<26} {fig['submit_to_start']:13.2f} {fig['startup']:9.2f} "
                f"{fig['train']:7.2f} {ratio:11.2f}x"
            )


if __name__ == "__main__":
    main()
