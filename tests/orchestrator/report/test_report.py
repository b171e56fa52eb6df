"""`write_report`: report.md and PNGs from a fake store, full and partial, real and synthetic."""

from __future__ import annotations

import statistics

import pytest

from fer_core.errors import FerError
from orchestrator.report.document import write_report
from tests.orchestrator.report.fake_results import accuracy, make_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _mean_pm_std(dataset: str, strategy: str, folds=(1, 2, 3)) -> str:
    values = [accuracy(dataset, strategy, f) for f in folds]
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("report") / "run")
    return run, write_report(run.path)


def test_writes_markdown_and_pngs(full):
    run, report = full
    assert report.path == run.path / "report" / "report.md" and report.path.is_file()
    pngs = sorted(p.name for p in report.path.parent.glob("*.png"))
    assert pngs == [
        "confusion-ckplus-inception_v3-heldout.png",
        "confusion-oulu-inception_v3-heldout.png",
        "folds.png",
    ]
    text = report.path.read_text()
    for name in pngs:
        assert (report.path.parent / name).read_bytes().startswith(PNG_MAGIC)
        assert f"]({name})" in text  # linked from the markdown
    assert not list(report.path.parent.glob(".tmp-*"))


def test_strategy_table_beside_the_paper(full):
    _, report = full
    text = report.path.read_text()
    ours = _mean_pm_std("ckplus", "ce>focal")
    row = next(
        line
        for line in text.splitlines()
        if line.startswith("| ckplus | inception_v3 | ce>focal |")
    )
    assert ours in row and "98.8" in row and "3/3" in row
    assert "87.7" in text and "88.3" in text  # Oulu, Table 3
    terminal = report.strategy_table
    assert ours in terminal and "98.8" in terminal and "|" not in terminal
    lines = terminal.splitlines()
    assert len({len(line) for line in lines[1:3]}) == 1  # header and rule aligned


def test_header_data_and_protocol(full):
    _, report = full
    text = report.path.read_text()
    assert "Grid: **fake**" in text
    assert "Units done: **14 of 14**" in text
    assert "cpu ×12" in text
    assert "**heldout**: the paper's protocol" in text and "optimistic" in text
    assert "| ckplus | ckplus | 140 | 20 |" in text  # images, subjects from the prepare row
    assert "SYNTHETIC" not in text


def test_per_class_paired_and_focal_note(full):
    _, report = full
    text = report.path.read_text()
    assert "| contempt | 6 | 66.7 | 83.3 | +16.7 | +5.6 |" in text
    assert "87.1 → 89.6 (+2.5)" in text
    # ckplus: ce>focal - ce per fold = +7.14, 0, +7.14 (errors 2,1,3 -> 1,1,2 of 14)
    assert "| ce>focal − ce | +7.14 | +0.00 | +7.14 | +4.76 | +2 of 42 | 3 |" in text
    assert "exactly 0.25 × cross-entropy" in text
    assert "ckplus: the focal stage of `ce>focal` ran with γ = 0 and α = 0.25" in text


def test_synthetic_twin_is_labelled(tmp_path):
    run = make_run(tmp_path / "run", datasets=("ckplus",), synthetic=True)
    report = write_report(run.path)
    text = report.path.read_text()
    assert "**SYNTHETIC twin: `ckplus` is not ckplus data.**" in text
    assert "paper (real data)" in text and "98.8" in text
    assert "SYNTHETIC" in report.strategy_table and "paper (real data)" in report.strategy_table


def test_partial_results(tmp_path):
    skip = {
        ("ckplus", "ce>focal", 3),
        ("oulu", "ce>focal", 1),
        ("oulu", "ce>focal", 2),
        ("oulu", "ce>focal", 3),
        ("oulu", "ce", 3),
    }
    run = make_run(tmp_path / "run", skip=skip)
    report = write_report(run.path)
    text = report.path.read_text()
    ours = _mean_pm_std("ckplus", "ce>focal", folds=(1, 2))
    assert ours in text and "2/3" in text and "0/3" in text
    assert "Units done: **9 of 14**" in text
    assert "| ce>focal − ce | +7.14 | +0.00 | +3.57 | +1 of 28 | 2 |" in text
    assert "### oulu · inception_v3 (heldout): `ce` → `ce>focal`" not in text
    assert "0/3" in report.strategy_table


def test_one_fold_gives_na_p_values(tmp_path):
    run = make_run(tmp_path / "run", datasets=("oulu",), folds=(1,))
    text = write_report(run.path).path.read_text()
    assert "| ce>focal − ce | +8.33 | +8.33 | +1 of 12 | 1 | n/a | n/a |" in text


def test_nothing_finished_yet(tmp_path):
    skip = {(d, s, f) for d in ("ckplus", "oulu") for s in ("ce", "ce>focal") for f in (1, 2, 3)}
    run = make_run(tmp_path / "run", skip=skip)
    report = write_report(run.path)
    text = report.path.read_text()
    assert "No finished folds yet." in text and "No predictions stored yet." in text
    assert "0/3" in report.strategy_table
    assert not list(report.path.parent.glob("*.png"))


def test_any_strategies_and_inner_selection(tmp_path):
    errors = {("ckplus", s): [1, 2, 0] for s in ("focal", "focal>ce")}
    run = make_run(
        tmp_path / "run",
        datasets=("ckplus",),
        strategies=("focal", "focal>ce"),
        errors=errors,
        selection="inner",
    )
    report = write_report(run.path)
    text = report.path.read_text()
    assert "**inner**" in text and "not the paper's protocol" in text
    assert "| ckplus | inception_v3 | focal>ce | inner |" in text and "98.5" in text
    assert "focal>ce − focal" in text
    assert "### ckplus · inception_v3 (inner): `focal` → `focal>ce`" in text
    assert (run.path / "report" / "confusion-ckplus-inception_v3-inner.png").is_file()


def test_missing_run_dir_or_dag(tmp_path):
    with pytest.raises(FerError, match="nowhere"):
        write_report(tmp_path / "nowhere")
    with pytest.raises(FerError, match="no dag.json"):
        write_report(tmp_path)
