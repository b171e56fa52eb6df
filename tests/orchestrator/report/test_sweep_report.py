"""The report of a real swept launch: each sweep point is reported on its own.

A `ce` + `ce>focal` grid with a stage-2 sweep `datasets.ckplus.focal.gamma=0,2`, two folds,
tiny CNN at 32 px, one epoch: the stage 1 (`ce`) is shared by both points, each point has its
own `ce>focal`. No cell may mix the points' rows, each point compares within itself, and
Holm's family spans both.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace

import pytest

from fer_core.errors import FerError
from orchestrator.plan.overrides import parse_settings
from orchestrator.report.aggregate import Group
from orchestrator.report.document import write_report
from orchestrator.report.results import load_results
from orchestrator.report.study import build_study
from orchestrator.run.launch import launch
from tests.helpers import small_grid

POINTS = ("datasets.ckplus.focal.gamma=0", "datasets.ckplus.focal.gamma=2")


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    grid = tmp / "sweep.yaml"
    grid.write_text(small_grid("sweep", folds="[1, 2]", epochs=1))
    settings = parse_settings(["datasets.ckplus.focal.gamma=0,2"])
    rundir = launch(str(grid), run_dir=tmp / "run", jobs=1, out=io.StringIO(), settings=settings)
    return rundir, write_report(rundir.path)


def _accuracy_by_name(rundir) -> dict[str, float]:
    """unit name -> its stored test accuracy in percent."""
    rows = rundir.store.read("runs").to_pylist()
    return {r["unit_label"]: 100.0 * r["test_accuracy"] for r in rows}


def test_each_point_has_its_own_rows_and_the_shared_stage_one(swept):
    rundir, _ = swept
    study = build_study(load_results(rundir.path))
    stored = _accuracy_by_name(rundir)
    assert len(stored) == 2 + 2 * 2  # ce per fold (shared) + ce>focal per fold and point
    at = {p: Group("ckplus", "tiny", "heldout", p) for p in POINTS}
    assert study.groups == [at[p] for p in POINTS]
    for point, gamma in zip(POINTS, (0, 2), strict=True):
        ce, chain = study.result(at[point], "ce"), study.result(at[point], "ce>focal")
        assert (ce.n, ce.expected_folds, chain.n, chain.expected_folds) == (2, 2, 2, 2)
        assert ce.folds == pytest.approx({f: stored[f"ckplus/f0{f}/tiny/ce"] for f in (1, 2)})
        assert chain.folds == pytest.approx(
            {f: stored[f"ckplus/f0{f}/tiny/ce>focal@gamma={gamma}"] for f in (1, 2)}
        )
    # the shared stage 1 is the same units under both points; the chains are not
    ce_units = [study.result(at[p], "ce").unit_ids for p in POINTS]
    chain_units = [set(sum(study.result(at[p], "ce>focal").unit_ids.values(), [])) for p in POINTS]
    assert ce_units[0] == ce_units[1] and not chain_units[0] & chain_units[1]


def test_comparisons_stay_within_a_point_and_holm_spans_all(swept):
    rundir, report = swept
    study = build_study(load_results(rundir.path))
    stored = _accuracy_by_name(rundir)
    assert [(c.group.point, c.paired.a, c.paired.b) for c in study.comparisons] == [
        (p, "ce>focal", "ce") for p in POINTS
    ]
    for comparison, gamma in zip(study.comparisons, (0, 2), strict=True):
        chain = [stored[f"ckplus/f0{f}/tiny/ce>focal@gamma={gamma}"] for f in (1, 2)]
        ce = [stored[f"ckplus/f0{f}/tiny/ce"] for f in (1, 2)]
        differences = [a - b for a, b in zip(chain, ce, strict=True)]
        assert comparison.paired.differences == pytest.approx(differences)
    text = report.path.read_text()
    assert "pool every point" not in text
    assert "**Sweep: 2 grid points**" in text and "all points together (m = 2)" in text
    assert "Choosing the best point from these results is itself selection on the test" in text
    assert "Holm's correction covers the number of tests, not that optimism" in text
    for point in POINTS:
        assert f"### ckplus · tiny (heldout) · {point}\n" in text
        assert f"| ckplus | tiny | ce | {point} | heldout |" in text
        assert f"| ckplus | tiny | ce>focal | {point} | heldout |" in text
        png = f"confusion-ckplus-tiny-heldout-{point.replace('=', '_')}.png"
        assert (report.path.parent / png).is_file()


def test_a_dag_that_does_not_record_the_points_is_refused_not_averaged(swept, tmp_path):
    """A dag.json of a swept run written before units knew their points: the two points'
    `ce>focal` land in one cell, which must be an error naming both, not their mean."""
    rundir, _ = swept
    units = rundir.read_dag()
    try:
        rundir.write_dag([replace(u, points=()) for u in units])
        assert '"points"' not in rundir.dag_path.read_text()
        with pytest.raises(FerError, match=r"two results for ce>focal on fold 1, seed 0: .*"):
            write_report(rundir.path)
    finally:
        rundir.write_dag(units)
    assert json.loads(rundir.dag_path.read_text())[0]["points"] == list(POINTS)
