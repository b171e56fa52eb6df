"""Per-unit overhead of each backend on this machine: submit -> unit start.

    .venv/bin/python bench/backend_overhead.py [--backends local,slurm,ray] [--units 2]
        [--ref REV]

For each backend, a few one-epoch units of the tiny CNN (one fold each, in parallel on
this machine's cores) are launched into one run dir, and for each unit the time from its
submission (the job id recorded in submissions.json) to the start of `run_unit` (imports
done, data not yet loaded) is read back, with the unit's own start-up figure (process start
-> first training step, from `runs`) and its training time. The baseline, run first in the
same process, is the same units as fresh `python -m orchestrator.run.worker RUN_DIR UNIT`
processes: what a SLURM job runs, and what the local backend ran before it forked its
workers from a pre-loaded server. `slurm` needs the one-node SLURM of
scripts/local_slurm.sh (profile `slurm-local`); a backend that cannot start is reported
and skipped. Each backend's launch runs in a fresh `python bench/backend_overhead.py
--measure` (a launcher as the CLI's, importing only what it does).

`--ref REV` also measures the `ray` backend (or the first of --backends) of commit REV, in a
temporary `git worktree` of it (removed afterwards) imported through PYTHONPATH, in the same
run dir and under the same load: before and after side by side. Figures are printed, never
asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
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
OVERHEADS = ("submit_to_start", "startup")
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


def _measure(rundir: RunDir, grid_path: str, backend: str, units: int, tree: Path) -> dict:
    """`_backend` in a fresh process importing the orchestrator of `tree`."""
    argv = [sys.executable, __file__, "--measure", backend, "--units", str(units)]
    argv += ["--run-dir", str(rundir.path), "--grid", grid_path]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=tree)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise FerError(f"{backend} at {tree}: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def _worktree(rev: str, parent: Path):
    """A detached `git worktree` of `rev` for the block, removed afterwards."""
    path = parent / f"ref-{rev}"
    git = ["git", "-C", str(REPO)]
    subprocess.run([*git, "worktree", "add", "--detach", str(path), rev], check=True)
    try:
        yield path
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(path)], check=True)


def _print(results: dict[str, dict], units: int) -> None:
    print(f"{units} one-epoch tiny units per backend, in parallel; seconds per unit:")
    header = ("backend", "submit->start", "start-up", "sum", "train", "sum vs slurm")
    print("{:<28} {:>13} {:>9} {:>7} {:>7} {:>13}".format(*header))
    slurm = results.get("slurm")
    for name, fig in results.items():
        total = fig["submit_to_start"] + fig["startup"]
        ratio = ""
        if slurm:
            ratio = f"{total / (slurm['submit_to_start'] + slurm['startup']):12.2f}x"
        print(
            f"{name:<28} {fig['submit_to_start']:13.2f} {fig['startup']:9.2f} {total:7.2f} "
            f"{fig['train']:7.2f} {ratio:>13}"
        )
    pairs = [(n, n.split(" @ ")[0]) for n in results if " @ " in n and n.split(" @ ")[0] in results]
    for before, after in pairs:
        cells = [f"{key} {results[after][key] / results[before][key]:.2f}x" for key in OVERHEADS]
        print(f"{after} (this tree) / {before}: " + ", ".join(cells))
    if slurm:
        for name, fig in results.items():
            if name.startswith("ray"):
                cells = [f"{key} {fig[key] / slurm[key]:.2f}x" for key in OVERHEADS]
                print(f"{name} / slurm: " + ", ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="local,slurm,ray")
    parser.add_argument("--units", type=int, default=2, help="units per backend, in parallel")
    parser.add_argument("--ref", help="also measure the Ray backend of this commit (before)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # one backend, in a child
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--grid", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        figures = _backend(RunDir(Path(args.run_dir)), args.grid, args.measure, args.units)
        print(json.dumps(figures))
        return
    backends = args.backends.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        rundir = RunDir(tmp_path / "run")
        # Warm-up: the data-preparation unit and one training, so that no figure below
        # includes generating the synthetic twin or a cold file cache.
        launch(_grid(tmp_path, 0, 1), run_dir=rundir.path, out=io.StringIO())
        results = {"fresh process (baseline)": _baseline(rundir, _grid(tmp_path, 1, args.units))}
        runs = [(backend, REPO) for backend in backends]
        with contextlib.ExitStack() as stack:
            if args.ref:  # measured just before this tree's, under the closest load
                ref_backend = "ray" if "ray" in backends else backends[0]
                ref_tree = stack.enter_context(_worktree(args.ref, tmp_path))
                runs.insert(backends.index(ref_backend), (ref_backend, ref_tree))
            for seed, (backend, tree) in enumerate(runs, start=2):
                name = backend if tree == REPO else f"{backend} @ {args.ref}"
                try:
                    grid = _grid(tmp_path, seed, args.units)
                    results[name] = _measure(rundir, grid, backend, args.units, tree)
                except (FerError, OSError) as exc:
                    print(f"{name}: skipped ({exc})")
        _print(results, args.units)


if __name__ == "__main__":
    main()
