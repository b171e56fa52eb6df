"""The comparison sections of the report: per-class accuracy stage by stage, paired tests
across folds, and the note on focal loss with gamma = 0.

Split from `report_sections` because these are the sections that judge a claimed improvement:
they pair folds, pool predictions over the folds both strategies have, and put differences
into images, as PAPER.md asks.
"""

from __future__ import annotations

from typing import Any

from orchestrator.report import aggregate as agg
from orchestrator.report import paper_numbers as paper
from orchestrator.report.sections import NONE, group_title, pct, pvalue, signed
from orchestrator.report.study import Study
from orchestrator.texttable import markdown_table


# --- per-class accuracy ---------------------------------------------------------------------
def _paper_class_cell(kind: str, backbone: str, pair: tuple[str, str], name: str) -> str:
    if pair != paper.STAGE_PAIR:
        return ""
    absolute = paper.PER_CLASS_ABSOLUTE.get((kind, backbone), {}).get(name)
    change = paper.per_class_change(kind, backbone, name)
    if absolute is not None:
        return f"{absolute[0]:.1f} → {absolute[1]:.1f} ({absolute[1] - absolute[0]:+.1f})"
    return NONE if change is None else f"{change:+.1f}"


def per_class_section(study: Study) -> str:
    lines = ["## Per-class accuracy, stage by stage", ""]
    found = False
    for group in study.groups:
        kind = study.results.kind_of(group.dataset)
        for before, after in study.stage_pairs(group):
            folds = tuple(
                sorted(
                    set(study.result(group, before).folds) & set(study.result(group, after).folds)
                )
            )
            a = study.confusion(group, before, folds) if folds else None
            b = study.confusion(group, after, folds) if folds else None
            if a is None or b is None or a[0].shape != b[0].shape:
                continue
            found = True
            acc_a, acc_b = agg.per_class_accuracy(a[0]), agg.per_class_accuracy(b[0])
            rows = [
                [
                    name,
                    int(a[0][i].sum()),
                    pct(acc_a[i], 1),
                    pct(acc_b[i], 1),
                    signed(acc_b[i] - acc_a[i], 1),
                    _paper_class_cell(kind, group.backbone, (before, after), name),
                ]
                for i, name in enumerate(a[1])
            ]
            paper_col = (
                "paper change (real data)"
                if study.results.is_synthetic(group.dataset)
                else "paper change"
            )
            lines += [
                f"### {group_title(group)}: `{before}` → `{after}`",
                "",
                f"Pooled over the {len(folds)} folds both have ({int(a[0].sum())} test images).",
                "",
                markdown_table(
                    ["class", "images", f"{before} (%)", f"{after} (%)", "change", paper_col],
                    rows,
                    right=[False, True, True, True, True, False],
                ),
                "",
            ]
    if not found:
        lines.append("No stage-1/stage-2 pair with predictions on common folds yet.")
    else:
        lines.append("The paper's per-class changes are for Inception-v3, `ce` → `ce>focal`.")
    return "\n".join(lines).rstrip()


# --- paired comparisons ---------------------------------------------------------------------
def paired_section(study: Study) -> str:
    lines = [
        "## Paired comparisons across folds",
        "",
        "Per-fold difference in accuracy points (first minus second strategy; positive = first "
        "better), on the folds both have. 'net images' turns the difference into test images "
        "(on CK+, 0.6 points is about 6 of 981). p-values: paired t-test and Wilcoxon "
        "signed-rank test over folds; n/a with fewer than 2 paired folds or no variation. "
        "With n folds the Wilcoxon p cannot go below 2/2ⁿ (0.25 at 3 folds, 0.002 at 10).",
        "",
    ]
    found = False
    for group in study.groups:
        pairs = study.pairs(group)
        if not pairs:
            continue
        found = True
        compared = [
            (
                a,
                b,
                agg.paired_comparison(
                    a, study.result(group, a).folds, b, study.result(group, b).folds
                ),
            )
            for a, b in pairs
        ]
        all_folds = sorted({f for _, _, p in compared for f in p.folds})
        headers = (
            ["comparison"]
            + [f"f{f}" for f in all_folds]
            + ["mean", "net images", "n", "t-test p", "Wilcoxon p"]
        )
        rows = []
        for a, b, p in compared:
            diffs = dict(zip(p.folds, p.differences, strict=True))
            net, images = agg.net_images(study.result(group, a), study.result(group, b))
            rows.append(
                [f"{a} − {b}"]
                + [signed(diffs.get(f)) if f in diffs else "" for f in all_folds]
                + [
                    signed(p.mean_difference),
                    f"{net:+.0f} of {images}" if images else NONE,
                    p.n,
                    pvalue(p.t_pvalue),
                    pvalue(p.wilcoxon_pvalue),
                ]
            )
        right = [False] + [True] * (len(headers) - 1)
        lines += [f"### {group_title(group)}", "", markdown_table(headers, rows, right), ""]
    if not found:
        lines.append("Nothing to compare yet: a group needs two strategies with results.")
    return "\n".join(lines).rstrip()


# --- the focal note -------------------------------------------------------------------------
def _scalar(alpha: Any) -> float | None:
    if isinstance(alpha, bool):
        return None
    if isinstance(alpha, int | float):
        return float(alpha)
    if isinstance(alpha, str):
        try:
            return float(alpha)
        except ValueError:
            return None
    return None


def focal_note(study: Study) -> str:
    """PAPER.md asks the report to say that CK+'s α=0.25, γ=0 makes focal exactly 0.25 × CE."""
    lines = [
        "## Note: focal loss with γ = 0 is scaled cross-entropy",
        "",
        "With γ = 0 the focal loss −α (1−p_t)^γ log p_t is α × CE. The paper's CK+ stage-2 "
        "setting (α = 0.25, γ = 0) is therefore exactly 0.25 × cross-entropy: with SGD it equals "
        "continuing CE at 0.25 × the learning rate with 4 × the weight decay, from a freshly "
        "re-initialised last layer. A stage-2 gain on CK+ cannot come from focal down-weighting "
        "of easy examples.",
        "",
    ]
    seen: dict[tuple[str, float], set[str]] = {}
    for unit in study.results.train_units:
        config = unit.spec.get("config", {})
        alpha = _scalar(config.get("alpha"))
        if config.get("loss") == "focal" and float(config.get("gamma") or 0) == 0 and alpha:
            seen.setdefault((unit.dataset, alpha), set()).add(unit.strategy)
    if seen:
        for (dataset, alpha), strategies in seen.items():
            names = ", ".join(f"`{s}`" for s in sorted(strategies, key=agg.strategy_sort_key))
            lines.append(
                f"- **In this grid**: {dataset}: the focal stage of {names} ran with γ = 0 and "
                f"α = {alpha:g}, so its loss is exactly {alpha:g} × CE."
            )
    else:
        lines.append("- No focal stage in this grid ran with γ = 0 and a scalar α.")
    return "\n".join(lines)
