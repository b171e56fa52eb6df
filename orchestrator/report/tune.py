"""The report's α/γ search section: the landscape PNG, the chosen configuration and its
nested test accuracy (with the per-fold spread), from the `trials` table and
RUN_DIR/tune/choice.json. Present only in run dirs where `tune` has run.
"""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Collection
from pathlib import Path

from fer_core.io import atomic_write_bytes
from orchestrator.run.rundir import RunDir
from orchestrator.run.store import Store
from orchestrator.texttable import markdown_table, quantity
from orchestrator.tune.records import ChoiceRecord, TrialRow, read_choice, read_trials

FIGURE = "tune-landscape.png"
TOP = 8


def _pct(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{100 * value:.2f}"


def _load(run_dir: Path) -> tuple[ChoiceRecord | None, list[TrialRow]]:
    choice = read_choice(RunDir(run_dir).choice_path)
    rows = read_trials(Store(run_dir))
    if choice is not None:
        rows = [r for r in rows if r["experiment"] == choice["experiment"]]
    elif rows:  # no choice yet: the most recent experiment's finished trials
        latest = max(rows, key=lambda r: r["recorded_at"])["experiment"]
        rows = [r for r in rows if r["experiment"] == latest]
    return choice, rows


def landscape_png(rows: list[TrialRow], alpha_order: list[str], synthetic: bool) -> bytes:
    """γ (x) against α (y, categorical), complete trials coloured by inner-val mean (%);
    tagged SYNTHETIC when the searched dataset is a synthetic twin."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = list(alpha_order) + sorted({r["alpha"] for r in rows} - set(alpha_order))
    y_of = {label: i for i, label in enumerate(labels)}
    figure = Figure(figsize=(7.0, 1.2 + 0.55 * len(labels)), layout="constrained")
    ax = figure.subplots()
    complete = [r for r in rows if r["status"] == "complete"]
    if complete:
        points = ax.scatter(
            [r["gamma"] for r in complete],
            [y_of[r["alpha"]] for r in complete],
            c=[100 * r["inner_val_mean"] for r in complete],
            cmap="viridis",
            s=70,
            edgecolors="black",
            linewidths=0.5,
            zorder=3,
            label="complete (colour: mean inner-val %)",
        )
        figure.colorbar(points, ax=ax, pad=0.01).set_label("inner-val accuracy (%)")
    for status, marker, color, label in (
        ("stopped", "x", "0.55", "stopped early (ASHA)"),
        ("error", "X", "tab:red", "failed"),
    ):
        ended = [r for r in rows if r["status"] == status]
        if ended:
            ax.scatter(
                [r["gamma"] for r in ended],
                [y_of[r["alpha"]] for r in ended],
                marker=marker,
                color=color,
                s=45,
                zorder=2,
                label=label,
            )
    chosen = [r for r in rows if r["chosen"]]
    if chosen:
        ax.scatter(
            [chosen[0]["gamma"]],
            [y_of[chosen[0]["alpha"]]],
            s=260,
            facecolors="none",
            edgecolors="tab:red",
            linewidths=2,
            zorder=4,
            label="chosen",
        )
    ax.set_yticks(range(len(labels)), labels=labels)
    ax.set_ylim(-0.6, len(labels) - 0.4)
    ax.set_xlabel("γ (focusing parameter)")
    ax.set_ylabel("α")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.22), ncols=4, frameon=False)
    title = "α/γ search: inner-validation accuracy (test folds never seen)"
    title += " SYNTHETIC" if synthetic else ""
    ax.set_title(title, fontsize=9)
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, metadata={"Title": title})
    return buffer.getvalue()


def _listed(noun: str, numbers: list[int]) -> str:
    """`fold 3`, `folds 1, 2`."""
    return f"{noun}{'s' * (len(numbers) != 1)} {', '.join(str(n) for n in numbers)}"


def _runs(store: Store, ids: dict[str, str] | None) -> dict[str, float]:
    """Test accuracy per fold (as text) of the units `ids` (fold -> unit id)."""
    if not ids:
        return {}
    table = store.read("runs", set(ids.values()))
    found = {r["unit_id"]: r for r in (table.to_pylist() if table is not None else [])}
    return {fold: float(found[uid]["test_accuracy"]) for fold, uid in ids.items() if uid in found}


def _row(label: str, per_fold: dict[str, float]) -> list[str]:
    values = list(per_fold.values())
    if not values:
        return [label, "0", "–", "–"]
    mean = statistics.fmean(values)
    spread = f" ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else ""
    folds = ", ".join(
        f"f{k}: {_pct(v)}" for k, v in sorted(per_fold.items(), key=lambda x: int(x[0]))
    )
    return [label, str(len(values)), f"{_pct(mean)}{spread}", folds]


def tune_section(run_dir: str | Path, out_dir: Path, synthetic: Collection[str] = ()) -> str:
    """The Markdown section (and its PNG in `out_dir`), or "" when no search ran here;
    `synthetic` names the run's synthetic datasets (their figure is tagged SYNTHETIC)."""
    run_dir = Path(run_dir)
    choice, rows = _load(run_dir)
    if not rows:
        return ""
    alpha_order = choice["search_space"]["alpha"] if choice else []
    is_synthetic = any(r["dataset"] in synthetic for r in rows)
    atomic_write_bytes(out_dir / FIGURE, landscape_png(rows, alpha_order, is_synthetic))
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in ("complete", "stopped", "error")}
    lines = ["## α/γ search (Ray Tune, nested model selection)", ""]
    if choice is None:
        lines += [
            f"The search has not finished ({quantity(len(rows), 'trial')} so far: "
            f"{counts['complete']} "
            f"complete, {counts['stopped']} stopped early); run `tune` again on this run dir "
            "to resume it. No configuration has been chosen and no test fold scored.",
            "",
            f"![α/γ landscape]({FIGURE})",
        ]
        return "\n".join(lines)
    store = Store(run_dir)
    folds = _listed("fold", choice["test_folds"])
    splits = _listed("split", choice["search_folds"])
    scheduler = choice["scheduler"]
    sched_text = (
        f"ASHA (grace period {scheduler['grace_period']} epoch(s), reduction factor "
        f"{scheduler['reduction_factor']:g}, {scheduler['max_t']} epochs per trial)"
        if scheduler["type"] == "asha"
        else f"no early stopping ({scheduler['max_t']} epochs per trial)"
    )
    lines += [
        f"**Protocol.** The search never saw test {folds} of `{choice['dataset']}`: "
        f"their subjects were held out, and the other subjects were re-split into "
        f"{choice['inner_folds']} subject-independent inner folds (dataset "
        f"`{choice['dev_dataset']}`). Each trial trained stage 2 ({choice['strategy']}) from "
        f"the stage-1 checkpoint of inner {splits} (stage 1 trained once per split) and "
        "was ranked by its mean inner-validation accuracy alone. The chosen configuration was "
        "then trained on each test fold's own training set (best epoch picked on an inner "
        "fold) and scored on the test fold, once: a nested estimate.",
        "",
        f"- Search: {choice['search_alg']} (seed {choice['seed']}) over α ∈ "
        f"{{{', '.join(choice['search_space']['alpha'])}}}, γ ∈ {choice['search_space']['gamma']}; "
        f"{sched_text}.",
        f"- Trials: {len(rows)} ({counts['complete']} complete, {counts['stopped']} stopped early"
        f" by the scheduler, {counts['error']} failed); wall time of the `tune` call that "
        "finished the search (data, stage 1, trials, final units) "
        f"{choice['wall_seconds']:.0f} s.",
        "",
        f"![α/γ landscape]({FIGURE})",
        "",
        f"**Chosen: α = {choice['alpha']}, γ = {choice['gamma']:.3g}**: mean inner-validation "
        f"accuracy {_pct(choice['inner_val_mean'])}% (inner splits: "
        + ", ".join(
            f"{k}: {_pct(v)}"
            for k, v in zip(choice["search_folds"], choice["fold_inner_accuracy"], strict=True)
        )
        + ").",
        "",
    ]
    nested = _runs(store, choice["final_units"])
    table = [
        _row(f"nested estimate: {choice['strategy']}, chosen α/γ (selection inner)", nested),
        _row(
            "stage 1 alone (ce, selection inner), same folds", _runs(store, choice["stage1_units"])
        ),
    ]
    paper = _runs(store, choice["paper_protocol_units"])
    if paper:
        table.append(
            _row(
                "paper protocol: chosen α/γ, epochs picked on the test fold "
                "(optimistic, not an estimate)",
                paper,
            )
        )
    lines.append(
        markdown_table(["test accuracy", "folds", "mean ± std (%)", "per fold (%)"], table)
    )
    lines += ["", *_top_trials(rows)]
    return "\n".join(lines)


def _top_trials(rows: list[TrialRow]) -> list[str]:
    ranked = sorted(
        rows,
        key=lambda r: (
            r["status"] != "complete",
            -(
                r["inner_val_mean"]
                if math.isfinite(r["inner_val_mean"])
                else r["inner_val_last"] or 0.0
            ),
        ),
    )[:TOP]
    table = [
        [
            "←" if r["chosen"] else "",
            r["alpha"],
            f"{r['gamma']:.3g}",
            _pct(r["inner_val_mean"]),
            ", ".join(_pct(v) for v in r["fold_inner_accuracy"]),
            r["status"],
            f"{r['epochs_done']}/{r['max_epochs']}",
        ]
        for r in ranked
    ]
    headers = ["chosen", "α", "γ", "inner-val mean (%)", "per inner split (%)", "status", "epochs"]
    return [
        f"Top {len(table)} of {len(rows)} trials (query them: `SELECT * FROM trials`):",
        "",
        markdown_table(headers, table),
    ]
