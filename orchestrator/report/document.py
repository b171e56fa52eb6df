"""`report`: `RUN_DIR/report/report.md` with PNG figures beside it, from the store alone.

Everything is recomputed from the Parquet rows of the current grid's units on every call, so
the report is never stale and works on partial results (rows say how many folds are in).
Files are written atomically; a reader never sees half a report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fer_core.io import atomic_write_bytes, atomic_write_text
from orchestrator.report import compare, cost, figures, methods, sections
from orchestrator.report import paper_numbers as paper
from orchestrator.report import tune as report_tune
from orchestrator.report.aggregate import Group, row_normalised
from orchestrator.report.results import load_results
from orchestrator.report.study import Study, build_study
from orchestrator.texttable import quantity

REPORT_DIR = "report"
FOLDS_FIGURE = "folds.png"


@dataclass(frozen=True)
class Report:
    """Where the report went, and the strategy table for the terminal."""

    path: Path
    strategy_table: str


def _slug(*parts: str) -> str:
    return "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", p) for p in parts)


def _stage_label(strategy: str) -> str:
    return f"stage {strategy.count('>') + 1}"


def confusion_section(study: Study, out_dir: Path) -> str:
    """One PNG per dataset × backbone (× selection): each strategy's pooled, row-normalised
    confusion side by side, stage 1 before stage 2 as in the paper's Figs 3 and 5."""
    lines = [
        "## Confusion matrices (pooled over folds, rows = ground truth)",
        "",
        "Each panel pools the predictions of all finished folds"
        + (" and seeds" if study.multi_seed else "")
        + "; its title gives the **pooled** accuracy (correct / test images), which differs "
        "from the fold-mean accuracy of the tables when folds differ in size.",
        "",
    ]
    drawn = 0
    for group in study.groups:
        panels, classes = [], None
        for strategy in study.strategies(group):
            found = study.confusion(group, strategy)
            if found is None or (classes is not None and len(found[1]) != len(classes)):
                continue
            counts, classes = found
            accuracy = 100.0 * counts.trace() / max(counts.sum(), 1)
            result = study.result(group, strategy)
            seeds = f" × {len(result.seeds)} seeds" if len(result.seeds) > 1 else ""
            title = (
                f"{strategy} ({_stage_label(strategy)})\n"
                f"pooled {accuracy:.1f}% of {int(counts.sum())} predictions, "
                f"{quantity(result.n, 'fold')}{seeds}"
            )
            panels.append(figures.ConfusionPanel(title, row_normalised(counts)))
        if not panels or classes is None:
            continue
        point = [group.point] if group.point else []
        name = f"confusion-{_slug(group.dataset, group.backbone, group.selection, *point)}.png"
        title = _figure_title(study, group)
        atomic_write_bytes(out_dir / name, figures.confusion_figure(panels, classes, title))
        lines += [f"### {title}", "", f"![confusion matrices, {title}]({name})", ""]
        drawn += 1
    if not drawn:
        lines.append("No predictions stored yet.")
    return "\n".join(lines).rstrip()


def fold_panels(study: Study) -> list[figures.FoldPanel]:
    """One axes per group: each strategy's headline metric per fold (per seed on a fixed
    split), against chance and the majority-class floor in that metric."""
    panels = []
    for group in study.groups:
        kind = study.results.kind_of(group.dataset)
        results = [study.result(group, s) for s in study.strategies(group)]
        fixed = any(r.fixed for r in results)  # one test set: its seeds are the units
        folds = {r.strategy: r.seeds if fixed else r.folds for r in results}
        if not any(folds.values()):
            continue
        numbers = {s: paper.paper_accuracy(kind, group.backbone, s) for s in folds}
        paper_means = {s: v for s, v in numbers.items() if v is not None}
        chance, majority = _floors(study, group)
        headline = study.headline(group.dataset)
        if headline.column != "test_accuracy":
            majority = chance  # always the majority class: one class right of C, all others 0
        panels.append(
            figures.FoldPanel(
                _figure_title(study, group),
                folds,
                paper_means,
                chance,
                majority,
                metric=headline.name,
                unit="seed" if fixed else "fold",
            )
        )
    return panels


def folds_section(study: Study, out_dir: Path) -> str:
    """A strip/box plot of per-fold accuracy per strategy, one axes per group."""
    panels = fold_panels(study)
    if not panels:
        return "## Accuracy per fold\n\nNo finished folds yet."
    atomic_write_bytes(out_dir / FOLDS_FIGURE, figures.fold_figure(panels))
    seeds = " (averaged over its seeds)" if study.multi_seed else ""
    paper_text = "; red crosses are the paper's means" + (
        " (real data)" if any(study.results.is_synthetic(g.dataset) for g in study.groups) else ""
    )
    return (
        f"## Accuracy per fold\n\nEach dot is one test fold's headline metric (the strategy "
        f"table names it per dataset){seeds}; on a fixed split, with its one test set, each dot "
        "is a seed; grey lines join the same fold (seed) across strategies (the pairing the "
        "tests use)"
        + (paper_text if any(panel.paper for panel in panels) else "")
        + ". Dotted: chance (1 / number of classes); dashed: always predicting the majority "
        "class (its share of the test images in accuracy; in mean-class accuracy it is chance)."
        "\n\n"
        f"![per-fold accuracy]({FOLDS_FIGURE})"
    )


def _floors(study: Study, group: Group) -> tuple[float | None, float | None]:
    """(chance %, majority-class share %) of the group's test images, from any strategy's
    pooled predictions; (None, None) before any are stored."""
    for strategy in study.strategies(group):
        found = study.confusion(group, strategy)
        if found is not None:
            per_class = found[0].sum(axis=1)
            return 100.0 / len(per_class), 100.0 * per_class.max() / max(per_class.sum(), 1)
    return None, None


def _figure_title(study: Study, group: Group) -> str:
    """The group's title, tagged SYNTHETIC on every figure of a synthetic twin."""
    title = sections.group_title(group)
    return title + (" SYNTHETIC" if study.results.is_synthetic(group.dataset) else "")


def write_report(run_dir: str | Path) -> Report:
    """Build `RUN_DIR/report/report.md` and its figures; return its path and the text table."""
    results = load_results(run_dir)
    study = build_study(results)
    out_dir = results.rundir.path / REPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [
        sections.header(study),
        methods.setup_section(study),
        sections.data_section(study),
        sections.strategy_section(study),
        sections.published_section(study),
        folds_section(study, out_dir),
        compare.paired_section(study),
        sections.recall_section(study),
        compare.per_class_section(study),
        confusion_section(study, out_dir),
        compare.focal_note(study),
        cost.cost_section(study, out_dir),
        report_tune.tune_section(
            results.rundir.path, out_dir, {n for n, d in results.datasets.items() if d.synthetic}
        ),
    ]
    parts = [part for part in parts if part]
    path = out_dir / "report.md"
    text = "\n\n".join(parts) + "\n"
    atomic_write_text(path, text)
    _remove_unlinked_figures(out_dir, text)
    return Report(path, sections.strategy_text(study))


def _remove_unlinked_figures(out_dir: Path, text: str) -> None:
    """Delete the figures an earlier report drew that this one does not link (a group that
    became a sweep's points, a search since removed), so the folder holds one report, not
    two; only names this module writes are touched, never a file a person put there."""
    ours = [
        FOLDS_FIGURE,
        report_tune.FIGURE,
        cost.TIMELINE_FIGURE,
        *(p.name for p in out_dir.glob("confusion-*.png")),
    ]
    for name in ours:
        if f"({name})" not in text:
            (out_dir / name).unlink(missing_ok=True)
