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
from orchestrator.report.aggregate import Paired
from orchestrator.report.sections import NONE, group_title, pct, pvalue, signed
from orchestrator.report.significance import TTest
from orchestrator.report.study import Comparison, Study
from orchestrator.texttable import markdown_table, quantity


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
                f"Pooled over the {quantity(len(folds), 'fold')} both have{seeds} "
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
        "folds",
        *["seeds", "std between seeds"] * study.multi_seed,
        "corrected p",
        "Holm p",
        "paired t p",
        "Wilcoxon p",
        "test-fold selections",
    ]
    rows = []
    for c in comparisons:
        p = c.paired
        seeds = len(p.seed_differences)
        rows.append(
            [
                f"{p.a} − {p.b}",
                signed(p.mean_difference),
                _interval(p.corrected),
                f"{p.net_images:+.{_net_digits(p)}f} of {p.images}" if p.images else NONE,
                p.n,
                *[seeds, pct(p.seed_std) if seeds > 1 else NONE] * study.multi_seed,
                pvalue(p.corrected.pvalue if p.corrected else None),
                pvalue(c.holm_pvalue),
                pvalue(p.paired_t.pvalue if p.paired_t else None),
                pvalue(p.wilcoxon_pvalue),
                _rounds_cell(c),
            ]
        )
    right = [False] + [True] * (len(headers) - 2) + [False]
    return markdown_table(headers, rows, right)


def _net_digits(paired: Paired) -> int:
    """Whole images with one seed; a mean over seeds may be a fraction of an image."""
    return 0 if paired.net_images.is_integer() else 1


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
    head = f"**Multiple comparisons.** This report makes {quantity(n, 'comparison')}; "
    if not tested:
        return [head + "none has a defined corrected p yet, so there is nothing to correct."]
    lines = [
        head + f"{len(tested)} with a defined corrected p form the family of Holm's correction "
        f"(m = {len(tested)}). 'Holm p' is the corrected p after Holm's step-down correction: "
        "claiming only the comparisons with Holm p < 0.05 keeps the chance of any false claim "
        "among these at about 5 %. Only about: Holm's guarantee holds for valid p-values, and "
        "the corrected resampled t-test is a heuristic whose level is itself approximate. "
        "The family:",
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
        "Each comparison pairs two strategies on the test folds both have; differences are in "
        "points of the dataset's headline metric (strategy table), first minus second "
        "(positive = first better). 'net images' counts the test images the first got right "
        f"minus those the second got right (overall accuracy), over those folds{example}."
        + (
            " **The unit of every test is the test fold**: a fold's difference is the mean over "
            "the seeds both have on it, because seeds on one fold share its training and test "
            "images (counting them as independent units would make every p too small). "
            "'seeds' and 'std between seeds' (the sample std of the per-seed mean differences) "
            "only describe how much a re-run with another seed moves the difference; 'net "
            "images' is a mean over seeds."
            if study.multi_seed
            else ""
        ),
        "",
        "- **corrected p** and the **95 % CI**: the corrected resampled t-test for "
        "cross-validation (Nadeau & Bengio 2003). The training sets of different folds share "
        "most of their images, so the per-fold differences are correlated; the test inflates "
        "the variance of the J fold differences by (1/J + n_test/n_train) instead of 1/J. "
        + _ratio_text(study)
        + ".",
        "- **paired t p** and **Wilcoxon p** (signed-rank) ignore that overlap and are "
        "anti-conservative; they are shown for comparison. With J folds the Wilcoxon p cannot "
        "go below 2/2ᴶ (0.25 at 3, 0.002 at 10), and tied differences (folds where the first "
        "won by the same number of images) are ranked as ties. n/a: fewer than 2 folds, no "
        "variation, or "
        "(corrected test only) training-set sizes unknown.",
        "- **test-fold selections**: how many times each side's test fold chose the kept epoch.",
    ]
    if any(c.paired.fixed for c in study.comparisons):
        lines.append(
            "- On a **fixed split** (column `fixed`) the units are seeds, paired by seed (the "
            "'folds' column then counts seeds): every seed trains on the same images and is "
            "scored on the same test set, so no training data is resampled, n_test/n_train is "
            "0 and the corrected test is the paired t-test over seeds. It measures the spread "
            "of training runs, not of test sets: a fixed split has no fold variance."
        )
    heldout = [c for c in study.comparisons if c.group.selection == "heldout"]
    if heldout:
        lines.append(
            "- ⚠ **heldout comparisons are optimistic**: under `heldout` every stage that keeps "
            "its best epoch (all of them, unless `final_epoch: last`) picks it on the test fold. "
            "The optimism this adds is not measured "
            "here; with test folds of about a hundred images it can be of the order of a point, "
            "as large as the gains at stake."
            + (
                " A k-stage chain has had k rounds of that selection against one for a single "
                "stage, so a difference in favour of the longer chain is an upper bound."
                if any(len(set(c.rounds)) > 1 for c in heldout)
                else ""
            )
            + (
                " The headline comparisons below use the `inner` results: no epoch selection "
                "on the test fold."
                if study.headline_selection
                else " Run the grid with `selection: inner` for a comparison with no epoch "
                "selection on the test fold."
            )
            + " That is all `inner` removes: settings chosen by looking at test-fold results "
            "(the paper's α and γ, a learning rate tuned on `heldout` accuracies, the best "
            "point of a sweep) keep an optimism that no test here corrects."
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
            role = "epochs chosen on the test fold"
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


def _ce_factor(config: dict[str, Any]) -> float | None:
    """c where the stage's loss is exactly c × CE: a `focal` or `joint` stage with γ = 0 and
    a scalar α (focal = α × CE, joint = CE + w · focal = (1 + w·α) × CE); None otherwise."""
    alpha = _scalar(config.get("alpha"))
    if not alpha or float(config.get("gamma") or 0) != 0:
        return None
    if config.get("loss") == "focal":
        return alpha
    if config.get("loss") == "joint":
        return 1.0 + float(config.get("joint_weight", 1.0)) * alpha
    return None


def focal_note(study: Study) -> str:
    """docs/METHOD.md §1: with γ = 0 and a scalar α, `focal` and `joint` are scaled CE, so every
    strategy of the paper's CK+ setting is CE at another effective learning rate."""
    lines = [
        "## Note: focal loss with γ = 0 is scaled cross-entropy",
        "",
        "With γ = 0 the focal loss −α (1−p_t)^γ log p_t is α × CE, and `joint` (CE + w · focal) "
        "is (1 + w·α) × CE. With SGD, training on c × CE equals training on CE at c × the "
        "learning rate with the weight decay divided by c (momentum scales alike). The paper's "
        "CK+ setting (α = 0.25, γ = 0) therefore makes every strategy of its Table 4 "
        "cross-entropy at another effective learning rate: `focal` is CE at 0.25 × the "
        "learning rate with 4 × the weight decay, `joint` (w = 1) CE at 1.25 × with weight "
        "decay ÷ 1.25, and the chains are CE followed by CE from a freshly re-initialised last "
        "layer. A scalar α weights every class alike, so no class balancing comes from it "
        "either: a difference between these strategies on CK+ cannot come from focal "
        "down-weighting of easy examples or from class weighting.",
        "",
    ]
    seen: dict[tuple[str, str, str], set[str]] = {}
    for unit in study.results.train_units:
        config = unit.spec.get("config", {})
        factor = _ce_factor(config)
        if factor is None:
            continue
        alpha = _scalar(config.get("alpha"))
        settings = f"α = {alpha:g}"
        if config.get("loss") == "joint":
            settings += f" and focal weight {float(config.get('joint_weight', 1.0)):g}"
        key = (
            unit.dataset,
            f"{config['loss']} stage",
            f"{settings}, so its loss is exactly {factor:g} × CE",
        )
        seen.setdefault(key, set()).add(unit.strategy)
    if seen:
        for (dataset, stage, effect), strategies in seen.items():
            names = ", ".join(f"`{s}`" for s in sorted(strategies, key=agg.strategy_sort_key))
            lines.append(
                f"- **In this grid**: {dataset}: the {stage} of {names} ran with γ = 0 and "
                f"{effect}."
            )
    else:
        lines.append("- No focal or joint stage in this grid ran with γ = 0 and a scalar α.")
    return "\n".join(lines)
