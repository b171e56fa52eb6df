"""The descriptive Markdown sections of the report (header, data, strategy table, cost) and
the cell formatters shared with `report_compare`; functions of the study, no file I/O.

The wording is deliberate: the report must say which selection protocol produced a number,
when a dataset is a synthetic twin, and how small a difference is in images, because those
are the things a reader comparing against the paper would otherwise get wrong.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from statistics import median
from typing import Any

import numpy as np

from orchestrator.report import aggregate as agg
from orchestrator.report import paper_numbers as paper
from orchestrator.report import published
from orchestrator.report.aggregate import Group
from orchestrator.report.study import Study
from orchestrator.texttable import markdown_table, text_table

SELECTION_TEXT = {
    "heldout": "**heldout**: the paper's protocol. Each stage's best epoch was chosen on the "
    "test fold itself, so these accuracies are optimistic (the test fold helped pick the model), "
    "and more so for longer chains: a k-stage strategy had k such rounds of selection (k − 1 "
    "under `final_epoch: last`, whose final stage keeps its last epoch).",
    "inner": "**inner**: each stage's best epoch was chosen on an inner, subject-independent "
    "validation fold taken from the training folds; the test fold was only scored. This is not "
    "the paper's protocol; expect numbers below the paper's.",
}
NONE = "–"


def pct(value: float | None, digits: int = 2) -> str:
    return NONE if value is None or math.isnan(value) else f"{value:.{digits}f}"


def signed(value: float | None, digits: int = 2) -> str:
    return NONE if value is None or math.isnan(value) else f"{value:+.{digits}f}"


def pvalue(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def mean_pm_std(result: agg.StrategyResult) -> str:
    """`98.37 ± 1.20` (± the std between folds; on a fixed split, which has one test set,
    between seeds); just the mean with one fold (or seed); a dash with none."""
    if result.n == 0:
        return NONE
    if result.fixed and len(result.seeds) > 1:
        return f"{pct(result.mean)} ± {pct(result.seed_std)}"
    if result.n == 1:
        return pct(result.mean)
    return f"{pct(result.mean)} ± {pct(result.std)}"


def folds_cell(result: agg.StrategyResult) -> str:
    if result.fixed:
        return "fixed split"
    return f"{result.n}/{result.expected_folds}" if result.expected_folds else str(result.n)


def group_title(group: Group) -> str:
    title = f"{group.dataset} · {group.backbone} ({group.selection})"
    return f"{title} · {group.point}" if group.point else title


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))


def _counted(values: list[Any]) -> str:
    counts = Counter(str(v) for v in values if v is not None)
    return ", ".join(f"{k} ×{n}" for k, n in counts.most_common()) or NONE


# --- header ---------------------------------------------------------------------------------
def header(study: Study) -> str:
    results = study.results
    runs = results.runs
    grid = results.info.get("grid") or next((r.get("grid") for r in runs if r.get("grid")), "?")
    train = results.train_units
    prepare = [u for u in results.units if u.kind == "prepare"]
    done_train = sum(u.id in results.done for u in train)
    done_prepare = sum(u.id in results.done for u in prepare)
    lines = [
        "# Two-stage CE → focal training for FER: study report",
        "",
        f"- Grid: **{grid}** (`{results.info.get('grid_file', '?')}`), run dir "
        f"`{results.rundir.path}`",
        f"- Generated {_utc(time.time())}"
        + (
            f"; results from {_utc(min(r['started_at'] for r in runs))} to "
            f"{_utc(max(r['finished_at'] for r in runs))}"
            if runs and all(r.get("started_at") and r.get("finished_at") for r in runs)
            else ""
        ),
        f"- Units done: **{done_train + done_prepare} of {len(results.units)}** "
        f"(training {done_train}/{len(train)}, data preparation {done_prepare}/{len(prepare)})",
        f"- Devices: {_counted([r.get('device') for r in runs])}; schedulers: "
        f"{_counted([r.get('scheduler') for r in runs])}; hosts: "
        f"{len({r.get('host') for r in runs if r.get('host')})}",
        "",
        "**Model selection** (which epoch of a stage is kept):",
        "",
    ]
    points = results.sweep_points
    if points:
        family = sum(c.holm_pvalue is not None for c in study.comparisons)
        lines[-3:-3] = [
            f"- **Sweep: {len(points)} grid points** ({'; '.join(points)}). Each point is "
            "reported separately (its own rows, figures and comparisons; a unit no swept key "
            "changes, such as a shared stage 1, counts in every point it serves); Holm's "
            f"correction runs over the comparisons of all points together (m = {family}). "
            "Choosing the best point from these results is itself selection on the test "
            "folds: Holm's correction covers the number of tests, not that optimism, so the "
            "best point's numbers are optimistic until a fresh run confirms them.",
        ]
    selections = sorted({g.selection for g in study.groups})
    for selection in selections or ["heldout"]:
        lines.append(f"- {SELECTION_TEXT.get(selection, f'**{selection}**')}")
    fixed = sorted({u.dataset for u in train if u.fold == 0})
    if fixed:
        lines.append(
            f"- On a **fixed split** ({', '.join(f'`{d}`' for d in fixed)}), `inner` means the "
            "dataset's own val split, or a stratified hold-out of its training split, chose "
            "the epoch; the test split was only scored."
        )
    if len(selections) > 1:
        lines.append("- This run mixes protocols: compare numbers only within one selection.")
    return "\n".join(lines)


# --- data -----------------------------------------------------------------------------------
def data_section(study: Study) -> str:
    results = study.results
    lines = ["## Data", ""]
    for name, info in results.datasets.items():
        if info.synthetic and not info.search_of:
            lines += [
                f"> **SYNTHETIC twin: `{name}` is not {info.kind} data.** It is generated "
                f"drawings in the {info.kind} layout. Its numbers show the pipeline works; they "
                "say nothing about the paper's claims."
                + (
                    " The paper column below shows real-data numbers for orientation only."
                    if _has_paper_numbers(study)
                    else ""
                ),
                "",
            ]
    rows: list[list[Any]] = []
    for name, info in results.datasets.items():
        row = results.prepare.get(name)
        kind_cell = f"{info.kind} (SYNTHETIC)" if info.synthetic else info.kind
        if info.search_of:
            kind_cell += f": the development subjects of `{info.search_of}` for the α/γ search"
        if row is None:
            rows.append([name, kind_cell, "not prepared yet", "", "", "", "", ""])
            continue
        classes = str(row.get("classes") or "")
        rows.append(
            [
                name,
                kind_cell,
                row.get("images"),
                row.get("subjects"),
                f"{len(classes.split(','))}: {classes.replace(',', ', ')}" if classes else NONE,
                row.get("detector"),
                *(  # `center` detects nothing: every crop is a centre crop by design
                    ("none (centre crops)", f"all {row.get('images')}")
                    if row.get("detector") == "center"
                    else (row.get("detected"), row.get("fallback"))
                ),
            ]
        )
    headers = [
        "dataset",
        "kind",
        "images",
        "subjects",
        "classes",
        "detector",
        "faces detected",
        "fell back to centre crop",
    ]
    lines.append(markdown_table(headers, rows))
    for name in results.datasets:
        skipped = json.loads(str((results.prepare.get(name) or {}).get("skipped") or "{}"))
        if skipped:  # rows the dataset itself marks as no expression: counted, not errors
            counts = ", ".join(f"{reason} {n:,}" for reason, n in sorted(skipped.items()))
            lines += ["", f"`{name}`: rows the dataset marks as no expression, dropped: {counts}."]
    return "\n".join(lines)


# --- the strategy table (Tables 2-5) --------------------------------------------------------
def _has_paper_numbers(study: Study) -> bool:
    """True when the paper prints a number for some row (not for a `tiny` backbone, say, nor
    for a user's own dataset): only then does the report point to the paper's tables."""
    return any(
        paper.paper_accuracy(study.results.kind_of(g.dataset), g.backbone, s) is not None
        for g in study.groups
        for s in study.strategies(g)
    )


def _paper_header(study: Study) -> str:
    return (
        "paper (real data)"
        if any(study.results.is_synthetic(g.dataset) for g in study.groups)
        else "paper"
    )


def _seed_cells(result: agg.StrategyResult) -> list[Any]:
    seeds = result.seeds
    return [len(seeds), pct(result.seed_std) if len(seeds) > 1 else NONE]


def strategy_rows(study: Study) -> tuple[list[str], list[list[Any]], list[bool]]:
    """Headers, rows and right-alignment of the strategy table; seed columns only when the
    run has replicates, paper columns only where the paper has numbers."""
    swept = bool(study.results.sweep_points)
    headers = ["dataset", "backbone", "strategy", *["sweep point"] * swept, "selection"]
    headers += ["headline", "accuracy (%)", "mean-class acc. (%)", "macro-F1 (%)", "folds"]
    right = [False] * (len(headers) - 4) + [True] * 4
    if study.multi_seed:
        headers += ["seeds", "std between seeds"]
        right += [True, True]
    with_paper = _has_paper_numbers(study)
    if with_paper:
        headers += [_paper_header(study), "paper table"]
        right += [True, False]
    rows = []
    for group in study.groups:
        kind = study.results.kind_of(group.dataset)
        for strategy in study.strategies(group):
            result = study.result(group, strategy)
            row = [
                group.dataset,
                group.backbone,
                strategy,
                *[group.point] * swept,
                group.selection,
                study.headline(group.dataset).name,
                *(mean_pm_std(result.metric(column)) for column in agg.METRICS),
                folds_cell(result),
            ]
            if study.multi_seed:
                row += _seed_cells(result)
            if with_paper:
                number = paper.paper_accuracy(kind, group.backbone, strategy)
                row += [
                    NONE if number is None else f"{number:.1f}",
                    paper.paper_source(kind, group.backbone, strategy) or "",
                ]
            rows.append(row)
    return headers, rows, right


def strategy_text(study: Study) -> str:
    """The terminal version: aligned columns, a caption line, no Markdown."""
    headers, rows, right = strategy_rows(study)
    if not rows:
        return "no training units in this grid"
    caption = "test metrics, fold-mean ± std between folds (a fixed split: between seeds) (%)"
    if study.multi_seed:
        caption += "; folds averaged over seeds"
    synthetic = any(study.results.is_synthetic(g.dataset) for g in study.groups)
    if synthetic and _has_paper_numbers(study):
        caption += "; SYNTHETIC data: the paper column is the paper's real-data number"
    return caption + "\n" + text_table(headers, rows, right=right, max_width=None)


def strategy_section(study: Study) -> str:
    headers, rows, right = strategy_rows(study)
    with_paper = _has_paper_numbers(study)
    seeds = (
        " Each fold's accuracy is first averaged over its seeds; 'std between seeds' is the "
        "sample std of the per-seed fold-means, the spread a re-run with another seed gives."
        if study.multi_seed
        else ""
    )
    fixed = any(study.result(g, s).fixed for g in study.groups for s in study.strategies(g))
    lines = [
        "## Accuracy by strategy" + (" (cf. the paper's Tables 2–5)" if with_paper else ""),
        "",
        "Test metrics in %: overall accuracy, mean-class accuracy (the mean of the per-class "
        "recalls, i.e. balanced accuracy) and macro-F1, each the **fold-mean** (the mean over "
        "test folds of each fold's figure) ± sample std between folds, over the folds finished "
        f"so far ('folds' = finished/planned).{seeds}"
        + (
            " A **fixed split** has one test set and no fold variance: its ± is the std "
            "between seeds, the replicates, and comparisons pair units by seed."
            if fixed
            else ""
        )
        + (" The paper reports 10-fold means with `heldout` selection." if with_paper else ""),
        "",
        *_headline_lines(study),
        markdown_table(headers, rows, right=right) if rows else "No training units in this grid.",
    ]
    kinds = [
        k
        for k in dict.fromkeys(study.results.kind_of(g.dataset) for g in study.groups)
        if k in paper.PRIOR_ART
    ]
    for kind in kinds:
        prior = ", ".join(f"{name} {value:.1f}" for name, value in paper.PRIOR_ART[kind].items())
        lines += ["", f"Prior art the paper lists for {kind} (Tables 2–3): {prior}."]
    return "\n".join(lines)


def _headline_lines(study: Study) -> list[str]:
    """Which metric leads each dataset's comparisons, and why (docs/METHOD.md D-19)."""
    names = list(dict.fromkeys(g.dataset for g in study.groups))
    if not names:
        return []
    lines = ["**Headline metric** (the one the paired comparisons test), per dataset:", ""]
    for name in names:
        headline = study.headline(name)
        lines.append(f"- `{name}`: **{headline.name}**: {headline.reason}.")
    return [*lines, ""]


def _mean_recalls(result: agg.StrategyResult) -> list[float]:
    """Per class, the mean of its recalls over the units that have test images of it."""
    values = np.asarray(list(result.recalls.values()), dtype=float)
    seen = ~np.isnan(values)
    totals = np.where(seen, values, 0.0).sum(axis=0)
    counts = seen.sum(axis=0)
    return [float(t / c) if c else math.nan for t, c in zip(totals, counts, strict=True)]


def recall_section(study: Study) -> str:
    """Per-class recall (%) of each strategy, the mean over its units (folds and seeds)."""
    lines = ["## Per-class recall", ""]
    found = False
    for group in study.groups:
        results = [study.result(group, s) for s in study.strategies(group)]
        results = [r for r in results if r.recalls]
        if not results:
            continue
        found = True
        classes = results[0].classes
        rows = [[r.strategy, *(pct(v, 1) for v in _mean_recalls(r))] for r in results]
        lines += [
            f"### {group_title(group)}",
            "",
            markdown_table(["strategy", *classes], rows, right=[False] + [True] * len(classes)),
            "",
        ]
    if not found:
        return "\n".join([*lines, "No per-class recalls recorded yet."])
    lines.append(
        "Each cell is the mean over the strategy's units (test folds, seeds) of the recall of "
        "that class, in %; a dash: the class has no test image in any unit. Mean-class "
        "accuracy is the mean of a row over the classes its test set has."
    )
    return "\n".join(lines)


def published_section(study: Study) -> str:
    """Other methods' published accuracies beside ours, for the benchmarks that have them;
    labelled as other methods and kept out of every statistic."""
    lines = [
        "## Published numbers of other methods",
        "",
        "Overall test accuracy (%) as published by other methods (their own networks, "
        "pre-training and training recipes), beside this run's overall accuracy on the same "
        "benchmark. They are for orientation only and enter none of this report's statistics.",
        "",
    ]
    shown = False
    for name, info in study.results.datasets.items():
        classes = str((study.results.prepare.get(name) or {}).get("classes") or "")
        benchmark = published.benchmark_of(info.kind, len([c for c in classes.split(",") if c]))
        others = published.published(benchmark) if benchmark else []
        if not others:
            continue
        shown = True
        rows: list[list[Any]] = [
            [p.method, "other method (published)", f"{p.accuracy:.2f}", p.source] for p in others
        ]
        for group in (g for g in study.groups if g.dataset == name):
            for strategy in study.strategies(group):
                result = study.result(group, strategy).metric("test_accuracy")
                rows.append(
                    [
                        f"`{strategy}`, {group.backbone}",
                        f"this run ({group.selection})",
                        mean_pm_std(result),
                        f"`{name}`" + (", SYNTHETIC twin" if info.synthetic else ""),
                    ]
                )
        lines += [
            f"### {benchmark} (`{name}`)",
            "",
            *(
                [
                    f"> `{name}` is a synthetic twin: the published figures are on the real "
                    f"{benchmark}, ours are not.",
                    "",
                ]
                if info.synthetic
                else []
            ),
            markdown_table(
                ["method", "kind", "accuracy (%)", "source"],
                rows,
                right=[False, False, True, False],
            ),
            "",
        ]
    return "\n".join(lines).rstrip() if shown else ""


# --- cost -----------------------------------------------------------------------------------
def cost_section(study: Study) -> str:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in study.results.runs:
        groups.setdefault((str(row.get("backbone")), str(row.get("device"))), []).append(row)

    def med(rows: list[dict[str, Any]], key: str) -> str:
        values = [float(r[key]) for r in rows if r.get(key) is not None]
        return NONE if not values else f"{median(values):.1f}"

    rows = [
        [
            backbone,
            device,
            len(rs),
            med(rs, "train_seconds"),
            med(rs, "images_per_second"),
            med(rs, "startup_seconds"),
        ]
        for (backbone, device), rs in groups.items()
    ]
    if not rows:
        return "## Cost\n\nNo finished training units yet."
    return "## Cost\n\n" + markdown_table(
        ["backbone", "device", "units", "median train s", "median images/s", "median start-up s"],
        rows,
        right=[False, False, True, True, True, True],
    )
