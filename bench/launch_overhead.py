"""Orchestrator overheads: expanding the paper grid, a dry run, and a no-op launch on a
finished paper-size store (180 trainings + 2 preparations, fake result files).

    .venv/bin/python bench/launch_overhead.py

Figures are printed, never asserted. The no-op launch reads only file existence, so it
should stay well under a second at paper size.
"""

from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path

from orchestrator.plan.dag import expand
from orchestrator.plan.grid import load_grid
from orchestrator.run.launch import launch
from orchestrator.run.rundir import RunDir


def _timed(label: str, func, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    print(f"{label:<46} {best * 1000:8.1f} ms (best of {repeats})")
    return best


def _fake_tree(root: Path, marker: str) -> Path:
    (root / marker).mkdir(parents=True)
    return root


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        ck = _fake_tree(tmp_path / "ck", "cohn-kanade-images")
        (ck / "Emotion").mkdir()
        oulu = _fake_tree(tmp_path / "oulu", "OriginalImg/VL/Strong")
        roots = {"ckplus": str(ck), "oulu": str(oulu)}
        run_dir = tmp_path / "run"

        _timed("load + validate paper grid", lambda: load_grid("paper", roots))
        grid = load_grid("paper", roots)
        exp = _timed("expand paper grid -> DAG", lambda: expand(grid, run_dir))
        dry = _timed(
            "launch --dry-run (paper)",
            lambda: launch(
                "paper", run_dir=run_dir, dry_run=True, data_roots=roots, out=io.StringIO()
            ),
        )

        units = expand(grid, run_dir)
        rundir = RunDir(run_dir)
        rundir.claim(grid.name, grid.path)
        rundir.write_dag(units)
        for unit in units:  # a finished store: one (tiny) result file per unit
            table = "runs" if unit.kind == "train" else "prepare"
            rundir.store.write(table, unit.id, [{"unit_id": unit.id}])
        noop = _timed(
            "launch on a finished paper store (no-op)",
            lambda: launch("paper", run_dir=run_dir, data_roots=roots, out=io.StringIO()),
        )
        print(
            f"units: {len(units)}; expand per unit: {exp / len(units) * 1e6:.0f} us; "
            f"no-op launch / dry run: {noop / dry:.1f}x"
        )


if __name__ == "__main__":
    main()
