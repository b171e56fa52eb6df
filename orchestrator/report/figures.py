"""PNG figures for the report: confusion heat maps (the paper's Figs 3 and 5), per-fold
accuracy strips, and the timeline of the cluster's attempts.

Drawn on `matplotlib.figure.Figure` with the Agg canvas, never through pyplot: no global
state and no display needed, so a report can be built on a headless login node or inside a
worker. Functions return PNG bytes; the caller writes them atomically.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from orchestrator.texttable import quantity

PANELS_PER_ROW = 3


@dataclass(frozen=True)
class ConfusionPanel:
    """One heat map: a row-normalised matrix with its title."""

    title: str
    matrix: np.ndarray  # rows ground truth, columns prediction, each row sums to 1 (or 0)


@dataclass(frozen=True)
class FoldPanel:
    """One axes of the per-fold figure: the headline metric per unit of each strategy (per
    test fold; per seed on a fixed split, whose one test set the seeds share)."""

    title: str
    folds: Mapping[str, Mapping[int, float]]  # strategy -> fold (or seed) -> metric %
    paper: Mapping[str, float]  # strategy -> the paper's mean, where it has one
    chance: float | None = None  # 100 / number of classes
    majority: float | None = None  # the metric of always predicting the most frequent class
    metric: str = "accuracy"  # the headline metric's name
    unit: str = "fold"  # what a dot is: `fold`, or `seed` on a fixed split


def _png(figure: Figure, title: str) -> bytes:
    """PNG bytes; `title` also goes into the PNG's Title text chunk, so a file separated from
    the report still says what it shows (and whether it is SYNTHETIC)."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, metadata={"Title": title})
    return buffer.getvalue()


def confusion_figure(panels: Sequence[ConfusionPanel], classes: Sequence[str], title: str) -> bytes:
    """Heat maps side by side with cell percentages; rows truth, columns prediction; the
    colour bar is in % like the cell labels."""
    n = len(classes)
    size = 0.55 * n + 1.6
    columns = min(len(panels), PANELS_PER_ROW)
    rows = (len(panels) + columns - 1) // columns
    figure = Figure(figsize=(size * columns + 0.8, (size + 0.6) * rows), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False)
    axes = grid.ravel()[: len(panels)]
    for spare in grid.ravel()[len(panels) :]:
        spare.set_visible(False)
    image = None
    for ax, panel in zip(axes, panels, strict=True):
        image = ax.imshow(100.0 * panel.matrix, cmap="Blues", vmin=0.0, vmax=100.0)
        for i in range(n):
            for j in range(n):
                value = panel.matrix[i, j]
                if value <= 0:
                    continue
                ax.text(
                    j,
                    i,
                    f"{100 * value:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if value > 0.6 else "black",
                )
        ax.set_xticks(range(n), labels=classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), labels=classes, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_title(panel.title, fontsize=9)
    for ax in grid[:, 0]:
        ax.set_ylabel("ground truth")
    if image is not None:
        bar = figure.colorbar(image, ax=list(axes), fraction=0.025, pad=0.01)
        bar.set_label("% of the true class")
    figure.suptitle(title, fontsize=10)
    return _png(figure, title)


def fold_figure(panels: Sequence[FoldPanel]) -> bytes:
    """Per strategy: a box over folds, each fold a dot, the same fold joined across strategies
    (pairing is what the paired tests use), the paper's mean as a red cross, and two floors a
    result must clear to mean anything: chance (uniform guess) and always predicting the
    majority class."""
    columns = min(len(panels), 3)
    rows = (len(panels) + columns - 1) // columns
    width = max(3.2, 1.1 * max(len(p.folds) for p in panels) + 1.5)
    figure = Figure(figsize=(width * columns, 3.6 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, panel in zip(axes, panels, strict=False):  # spare axes stay empty
        strategies = list(panel.folds)
        all_folds = sorted({f for folds in panel.folds.values() for f in folds})
        for fold in all_folds:
            xs = [i for i, s in enumerate(strategies) if fold in panel.folds[s]]
            ys = [panel.folds[strategies[i]][fold] for i in xs]
            ax.plot(xs, ys, color="0.75", linewidth=0.8, zorder=1)
        boxed = [(i, list(panel.folds[s].values())) for i, s in enumerate(strategies)]
        boxed = [(i, v) for i, v in boxed if v]
        if boxed:
            ax.boxplot(
                [v for _, v in boxed],
                positions=[i for i, _ in boxed],
                widths=0.45,
                showfliers=False,
                medianprops={"color": "tab:orange"},
            )
        for level, style, text, below in (
            (panel.chance, ":", "chance", True),
            (panel.majority, "--", "majority class", False),
        ):
            if level is not None:
                ax.axhline(level, color="0.45", linestyle=style, linewidth=1, zorder=0)
                ax.annotate(  # chance below its line, majority above: they may coincide
                    f"{text} {level:.1f}%",
                    (0.0, level),
                    xycoords=("axes fraction", "data"),
                    xytext=(3, -9 if below else 2),
                    textcoords="offset points",
                    fontsize=7,
                    color="0.35",
                )
        label: str | None = "paper mean (real data)"  # in the legend once
        for i, strategy in enumerate(strategies):
            values = list(panel.folds[strategy].values())
            ax.scatter([i] * len(values), values, s=14, color="tab:blue", zorder=3)
            if strategy in panel.paper:
                ax.scatter(
                    [i],
                    [panel.paper[strategy]],
                    marker="x",
                    s=60,
                    color="tab:red",
                    zorder=4,
                    label=label,
                )
                label = None
        labels = [f"{s}\n{quantity(len(panel.folds[s]), panel.unit)}" for s in strategies]
        ax.set_xticks(range(len(strategies)), labels=labels, fontsize=8)
        ax.set_xlim(-0.6, len(strategies) - 0.4)
        ax.set_ylabel(f"test {panel.metric} of the {panel.unit} (%)")
        ax.set_title(panel.title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        if panel.paper:
            ax.legend(fontsize=7, loc="lower right")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    return _png(figure, " | ".join(panel.title for panel in panels))


@dataclass(frozen=True)
class TimelineBar:
    """One attempt of a unit: queued from `queued` to `start`, ran from `start` to `end`
    (seconds since the run's first submission; `end` None while it runs)."""

    label: str
    queued: float | None
    start: float
    end: float
    state: str  # the colour: done, failed, requeued, cancelled, running...
    requeue: int


TIMELINE_COLOURS = {
    "done": "#2e7d32",
    "failed": "#c62828",
    "requeued": "#ef6c00",
    "interrupted": "#ef6c00",
    "cancelled": "#757575",
    "running": "#1565c0",
}


def timeline_figure(bars: Sequence[TimelineBar], title: str) -> bytes:
    """One bar per attempt, top to bottom by start: queue wait light and hatched, run time
    solid in its state's colour; a requeued attempt is marked `requeue N`."""
    height = max(2.5, 0.28 * len(bars) + 1.4)
    figure = Figure(figsize=(10, height), layout="constrained")
    axes = figure.subplots()
    scale, unit = (60.0, "min") if max(b.end for b in bars) >= 180 else (1.0, "s")
    for y, bar in enumerate(bars):
        colour = TIMELINE_COLOURS.get(bar.state, "#6a1b9a")
        if bar.queued is not None and bar.start > bar.queued:
            axes.barh(
                y,
                (bar.start - bar.queued) / scale,
                left=bar.queued / scale,
                color="#e0e0e0",
                hatch="///",
                edgecolor="#9e9e9e",
                linewidth=0,
            )
        axes.barh(y, max(bar.end - bar.start, 0) / scale, left=bar.start / scale, color=colour)
        if bar.requeue:
            axes.text(bar.end / scale, y, f" requeue {bar.requeue}", va="center", fontsize=7)
    axes.set_yticks(range(len(bars)), [b.label for b in bars], fontsize=7)
    axes.invert_yaxis()
    axes.set_xlabel(f"{unit} since the first submission")
    axes.set_title(title, fontsize=10)
    states = list(dict.fromkeys(b.state for b in bars))
    handles = [Patch(color="#e0e0e0", hatch="///", label="queued (eligible -> start)")]
    handles += [Patch(color=TIMELINE_COLOURS.get(s, "#6a1b9a"), label=s) for s in states]
    axes.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.grid(axis="x", alpha=0.3)
    return _png(figure, title)
