"""Fixtures of the fault suite: the study's data prepared once (by the real prepare unit), then
copied into each case's fresh run dir, so a case pays only for the trainings it breaks."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from orchestrator.plan.dag import expand
from orchestrator.plan.grid import load_grid
from orchestrator.run.rundir import RunDir
from tests.helpers import study_grid


@pytest.fixture(scope="session")
def prepared_template(twin_root, tmp_path_factory) -> Path:
    """A run dir whose data unit (index + face crops of the session twin) is done."""
    from orchestrator.run import worker

    tmp = tmp_path_factory.mktemp("fault-template")
    grid = tmp / "grid.yaml"
    grid.write_text(study_grid(twin_root))
    run = tmp / "run"
    units = expand(load_grid(str(grid)), run)
    rundir = RunDir(run)
    rundir.claim("faults", grid)
    rundir.write_dag(units)
    prepare = next(u for u in units if u.kind == "prepare")
    assert worker.run(run, prepare.id) == "done"
    return run


@pytest.fixture
def study(prepared_template, twin_root, tmp_path):
    """study(strategies=..., epochs=..., **train) -> (grid file, run dir) with data prepared."""

    def make(name: str = "faults", dataset: str = "ckplus", **kwargs) -> tuple[Path, Path]:
        grid = tmp_path / f"{name}.yaml"
        grid.write_text(study_grid(twin_root, name=name, dataset=dataset, **kwargs))
        run = tmp_path / "run"
        shutil.copytree(prepared_template / "data" / "ckplus", run / "data" / dataset)
        shutil.copytree(prepared_template / "store" / "prepare", run / "store" / "prepare")
        return grid, run

    return make


# --- the bad-input corpus count, printed at the end of the run -------------------------------
BAD_INPUT_RESULTS: Counter = Counter()


def pytest_runtest_logreport(report):
    if report.when == "call" and "test_bad_input_is_one_line" in report.nodeid:
        category = report.nodeid.split("[", 1)[-1].split("-", 1)[0]
        BAD_INPUT_RESULTS[(category, report.outcome)] += 1


def pytest_terminal_summary(terminalreporter):
    if not BAD_INPUT_RESULTS:
        return
    by_category = Counter()
    for (category, _), count in BAD_INPUT_RESULTS.items():
        by_category[category] += count
    passed = sum(n for (_, outcome), n in BAD_INPUT_RESULTS.items() if outcome == "passed")
    total = sum(by_category.values())
    detail = ", ".join(f"{k} {v}" for k, v in sorted(by_category.items()))
    terminalreporter.write_line(
        f"bad-input corpus: {passed} of {total} cases give a one-line error naming the "
        f"culprit, exit 2, nothing written ({detail})"
    )
