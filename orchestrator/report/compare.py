"""The comparison sections of the report: per-class accuracy stage by stage, paired tests
across folds, and the note on focal loss with gamma = 0.

Split from `report_sections` because these are the sections that judge a claimed improvement:
they pair folds, pool predictions over the folds both strategies have, and put differences
into images, as docs/METHOD.md asks.
"""

from __future__ import annotations

from typing import Any

from orchestrator.plan.labels import fold_tag
from orchestrator.report import aggregate as agg
from orchestrator.report import paper_numbers as paper
from orchestrator.report.sections import NONE, group_title, pct, pvalue, signed
from orchestrator.report.significance import TTest
from orchestrator.report.study import Comparison, Study
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
    found = paper_shown = False
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
            with_paper = (kind, group.backbone) in paper.PER_CLASS_CHANGE
            rows = [
                [
                    name,
                    int(a[0][i].sum()),
                    pct(acc_a[i], 1),
                    pct(acc_b[i], 1),
                    signed(acc_b[i] - acc_a[i], 1),
                ]
                + ([_paper_class_cell(kind, group.backbone, (before, after), name)] * with_paper)
                for i, name in enumerate(a[1])
            ]
            headers = ["class", "images", f"{before} (%)", f"{after} (%)", "change"]
            if with_paper:
                paper_shown = True
                synthetic = study.results.is_synthetic(group.dataset)
                headers.append("paper change (real data)" if synthetic else "paper change")
            seeds = " and seeds" if study.multi_seed else ""
            lines += [
                f"### {group_title(group)}: `{before}` → `{after}`",
                "",
                f"Pooled over the {len(folds)} folds both have{seeds} "
                f"({int(a[0].sum())} test predictions; pooled per-class accuracy).",
                "",
                markdown_table(
                    headers, rows, right=[False, True, True, True, True, False][: len(headers)]
                ),
                "",
            ]
    if not found:
        lines.append("No stage-1/stage-2 pair with predictions on common folds yet.")
    elif paper_shown:
        lines.append("The paper's per-class changes are for Inception-v3, `ce` → `ce>focal`.")
    return "\n".join(lines).rstrip()


# --- paired comparisons ---------------------------------------------------------------------
def _interval(test: TTest | None) -> str:
    return NONE if test is None else f"[{signed(test.low)}, {signed(test.high)}]"


def _rounds_cell(comparison: Comparison) -> str:
    """How many times each side's test fold chose an epoch, and whom that favours."""
    if comparison.group.selection != "heldout":
        return "0 vs 0"
    first, second = comparison.rounds
    if first == second:
        return f"{first} vs {second}: both optimistic"
    return f"{first} vs {second}: favours {'first' if first > second else 'second'}"


def _tests_table(comparisons: list[Comparison], study: Study) -> str:
    headers = [
        "comparison",
        "mean",
        "95 % CI (corrected)",
        "net images",
        "units",
        "corrected p",
        "Holm p",
        "paired t p",
        "Wilcoxon p",
        "test-fold selections",
    ]
    rows = []
    for c in comparisons:
        p = c.paired
        net, images = agg.net_images(  # test images right: overall accuracy's unit
            study.result(c.group, p.a).metric("test_accuracy"),
            study.result(c.group, p.b).metric("test_accuracy"),
        )
        rows.append(
            [
                f"{p.a} − {p.b}",
                signed(p.mean_difference),
                _interval(p.corrected),
                f"{net:+.0f} of {images}" if images else NONE,
                p.n,
                pvalue(p.corrected.pvalue if p.corrected else None),
                pvalue(c.holm_pvalue),
                pvalue(p.paired_t.pvalue if p.paired_t else None),
                pvalue(p.wilcoxon_pvalue),
                _rounds_cell(c),
            ]
        )
    return markdown_table(headers, rows, [False] + [True] * 8 + [False])


def _folds_table(comparisons: list[Comparison]) -> str:
    all_folds = sorted({f for c in comparisons for f in c.paired.folds})
    headers = ["comparison"] + [fold_tag(f) for f in all_folds]
    rows = []
    for c in comparisons:
        diffs = c.paired.fold_differences
        rows.append(
            [f"{c.paired.a} − {c.paired.b}"]
            + [signed(diffs[f]) if f in diffs else "" for f in all_folds]
        )
    return markdown_table(headers, rows, [False] + [True] * len(all_folds))


def _ratio_text(study: Study) -> str:
    found = [c.paired.test_train_ratio for c in study.comparisons]
    ratios = sorted({round(r, 3) for r in found if r is not None})
    sizes = (
        "derived from the prepare row's image count for "
        + ", ".join(group_title(g) for g in sorted(study.derived_n_train))
        + " (these rows do not record `n_train`)"
        if study.derived_n_train
        else "as the runs rows record them"
    )
    shown = ", ".join(f"{r:.3f}" for r in ratios) if ratios else "unknown"
    return f"n_test/n_train of the units here: {shown}, {sizes}"


def _family(study: Study) -> list[str]:
    n = len(study.comparisons)
    tested = [c for c in study.comparisons if c.holm_pvalue is not None]
    head = f"**Multiple comparisons.** This report makes {n} comparison{'s' * (n != 1)}; "
    if not tested:
        return [head + "none has a defined corrected p yet, so there is nothing to correct."]
    lines = [
        head + f"{len(tested)} with a defined corrected p form the family of Holm's correction "
        f"(m = {len(tested)}). 'Holm p' is the corrected p after Holm's step-down correction: "
        "claiming only the comparisons with Holm p < 0.05 keeps the chance of any false claim "
        "among these at 5 %:",
        "",
    ]
    return lines + [
        f"{i}. {group_title(c.group)}: `{c.paired.a}` − `{c.paired.b}`"
        for i, c in enumerate(tested, start=1)
    ]


def paired_section(study: Study) -> str:
    kinds = {study.results.kind_of(g.dataset) for g in study.groups}
    example = " (on CK+, 0.6 points is about 6 of 981)" if "ckplus" in kinds else ""
    lines = [
        "## Paired comparisons across folds",
        "",
        "Each comparison pairs two strategies on the units both have (a unit is one test fold"
        + (", per seed" if study.multi_seed else "")
        + "); differences are in points of the dataset's headline metric (strategy table), "
        "first minus second (positive = first "
        "better). 'net images' is the difference in test images classified correctly (from "
        f"overall accuracy){example}.",
        "",
        "- **corrected p** and the **95 % CI**: the corrected resampled t-test for "
        "cross-validation (Nadeau & Bengio 2003). The training sets of different folds share "
        "most of their images, so the per-fold differences are correlated; the test inflates "
        "the variance of the J differences by (1/J + n_test/n_train) instead of 1/J. "
        + _ratio_text(study)
        + ".",
        "- **paired t p** and **Wilcoxon p** (signed-rank) ignore that overlap and are "
        "anti-conservative; they are shown for comparison. With J units the Wilcoxon p cannot "
        "go below 2/2ᴶ (0.25 at 3, 0.002 at 10). n/a: fewer than 2 units, no variation, or "
        "(corrected test only) training-set sizes unknown.",
        "- **test-fold selections**: how many times each side's test fold chose the kept epoch.",
    ]
    if any(c.paired.folds == (0,) for c in study.comparisons):
        lines.append(
            "- On a **fixed split** (column `fixed`) the units are seeds, paired by seed: every "
            "seed trains on the same images and is scored on the same test set, so no training "
            "data is resampled, n_test/n_train is 0 and the corrected test is the paired "
            "t-test over seeds. It measures the spread of training runs, not of test sets: a "
            "fixed split has no fold variance."
        )
    if any(c.group.selection == "heldout" for c in study.comparisons):
        lines.append(
            "- ⚠ **heldout comparisons are biased toward multi-stage strategies**: under "
            "`heldout` every stage keeps the epoch that scored best on the test fold, so a "
            "k-stage chain has had k rounds of test-fold selection against one for a single "
            "stage. The optimism this adds is not measured here; with test folds of about a "
            "hundred images it can be of the order of a point, as large as the gains at stake, "
            "so read a difference in favour of the longer chain as an upper bound."
            + (
                " The headline comparisons below use the `inner` results."
                if study.headline_selection
                else " Run the grid with `selection: inner` for an unbiased comparison."
            )
        )
    lines.append("")
    if not study.comparisons:
        lines.append("Nothing to compare yet: a group needs two strategies with results.")
        return "\n".join(lines).rstrip()
    ordered = sorted(study.comparisons, key=lambda c: not c.headline)
    for group in dict.fromkeys(c.group for c in ordered):
        mine = [c for c in ordered if c.group == group]
        role = "headline" if study.headline_selection and mine[0].headline else ""
        if study.headline_selection and not role:
            role = "biased toward multi-stage strategies"
        title = group_title(group) + (f": {role}" if role else "")
        lines += [
            f"### {title}",
            "",
            _tests_table(mine, study),
            "",
            "Per-fold differences" + (" (mean over seeds)" if study.multi_seed else "") + ":",
            "",
            _folds_table(mine),
            "",
        ]
    lines += _family(study)
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
    """docs/METHOD.md §1: the report says that CK+'s α=0.25, γ=0 makes focal exactly 0.25 × CE."""
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
