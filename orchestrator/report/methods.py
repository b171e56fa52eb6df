"""The report's setup block: how the numbers were produced, written as a methods section.

Read from what the run itself recorded: each training unit's stage configuration (the runs
row's `config` JSON once it has run, the DAG's spec before), the runs rows' versions,
precision, determinism, git commit and, for units that ran as several processes, their
ranks, and the copy of the effective grid in the run dir.
A fact the rows do not carry (run dirs from before a column existed) is shown as "not
recorded", never guessed.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from statistics import median
from typing import Any

from fer_core.loss_registry import LOSS_PARAMS, LOSSES
from fer_core.models.backbones import BACKBONES
from orchestrator.report.sections import NONE
from orchestrator.report.study import Study
from orchestrator.texttable import markdown_table

NOT_RECORDED = "not recorded"
# What `fer_core.data.augment` does (a test keeps this in step with its constants).
AUGMENTATION = (
    "training images, drawn anew each epoch: resize to the input size, horizontal flip "
    "p = 0.5, vertical flip p = 0.5, rotation uniform in ±10°; test images: resize only"
)


def _configs(study: Study) -> list[tuple[Any, dict[str, Any]]]:
    """(unit, its stage config) for every training unit: as run where it has a row."""
    rows = {r["unit_id"]: r for r in study.results.runs}
    out = []
    for unit in study.results.train_units:
        row = rows.get(unit.id)
        config = json.loads(row["config"]) if row and row.get("config") else None
        out.append((unit, config or unit.spec.get("config", {})))
    return out


def _loss_text(config: dict[str, Any]) -> str:
    """`ce`, `focal (α 0.25, γ 0)`: the loss and the settings it takes (the loss registry)."""
    loss = str(config.get("loss"))
    spec = LOSSES.get(loss)
    if spec is None or not spec.params:
        return loss
    params = [LOSS_PARAMS[key] for key in spec.params]
    return f"{loss} ({', '.join(p.text(config.get(p.name, p.default)) for p in params)})"


def _schedule(config: dict[str, Any]) -> str:
    if config.get("lr") is None:
        return NONE
    text = f"{config['lr']:g}"
    step = config.get("lr_step_epoch")
    if step is not None and step < int(config.get("epochs") or 0):
        text += f", ×{config.get('lr_decay'):g} after epoch {step}"
    return text


def _stage_table(study: Study) -> str:
    """One row per distinct stage setting; the aux-head weight only for backbones that have
    an aux head (Inception-v3), and its column only when some unit's backbone has one."""
    with_aux = any(_has_aux(unit.backbone) for unit, _ in _configs(study))
    keys: dict[tuple[Any, ...], set[str]] = {}
    for unit, config in _configs(study):
        aux = str(config.get("aux_weight")) if _has_aux(unit.backbone) else NONE
        key = (
            unit.stage,
            _loss_text(config),
            config.get("epochs"),
            _schedule(config),
            config.get("momentum"),
            config.get("weight_decay"),
            config.get("batch_size"),
            *[aux] * with_aux,
        )
        keys.setdefault(key, set()).add(unit.dataset)
    rows = [[*key[:2], ", ".join(sorted(names)), *key[2:]] for key, names in sorted(keys.items())]
    headers = [
        "stage",
        "loss",
        "datasets",
        "epochs",
        "learning rate",
        "momentum",
        "weight decay",
        "batch",
        *["aux-head weight"] * with_aux,
    ]
    return markdown_table(headers, rows, [True, False, False] + [True] * (len(headers) - 3))


def _has_aux(backbone: str) -> bool:
    spec = BACKBONES.get(backbone)
    return spec is not None and spec.has_aux


def _counted(values: list[Any], missing: str = NOT_RECORDED) -> str:
    counts = Counter(str(v) for v in values if v is not None and v != "")
    if not counts:
        return missing
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{k} ×{n}" for k, n in counts.most_common())


# The runs columns of fer_core.provenance.library_versions, as the setup block names them.
LIBRARY_COLUMNS = (
    ("torchvision", "torchvision_version"),
    ("facenet-pytorch", "facenet_pytorch_version"),
    ("timm", "timm_version"),
    ("numpy", "numpy_version"),
    ("CUDA", "cuda_version"),
    ("cuDNN", "cudnn_version"),
)


def _recorded(study: Study, column: str, why: str) -> str:
    """A runs column's values, or "not recorded" (and why) when no row carries it."""
    runs = study.results.runs
    if not runs:
        return "no finished units yet"
    values = [r.get(column) for r in runs]
    if all(v is None for v in values):
        return f"{NOT_RECORDED} ({why})"
    missing = sum(v is None for v in values)
    text = _counted(values)
    return text + (f"; {missing} rows {NOT_RECORDED}" if missing else "")


def _folds(study: Study) -> list[str]:
    lines = []
    for name, info in study.results.datasets.items():
        units = [u for u in study.results.train_units if u.dataset == name]
        run = sorted({u.fold for u in units})
        if not run:
            continue
        if run == [0]:
            spec = units[0].spec
            lines.append(
                f"`{name}`: **fixed split**, the dataset's own train / val / test images; each "
                "stage's epoch is chosen on its val split, or where it has none on a stratified "
                f"hold-out of {100 * float(spec.get('holdout_fraction', 0.1)):g} % of each class "
                f"of its training split (seed {spec.get('holdout_seed', 0)}, the same images "
                "for every unit); the test split is only scored. One test set: no fold "
                "variance; replicates are seeds"
            )
            continue
        shown = (
            f"{run[0]}–{run[-1]}"
            if len(run) > 1 and run == list(range(run[0], run[-1] + 1))
            else ", ".join(str(f) for f in run)
        )
        if info.fold_rule == "contiguous":
            rule = f"fold ⌊i × {info.n_folds} / n⌋ + 1 of n subjects: consecutive blocks"
        else:
            rule = f"fold i mod {info.n_folds} + 1: interleaved"
        scored = "inner split" if info.search_of else "test fold"
        lines.append(
            f"`{name}`: {info.n_folds} subject-independent folds (subject ids sorted ascending, "
            f"the i-th subject, counted from 0, goes to {rule}; fold_rule "
            f"`{info.fold_rule}`, D-9); {scored}{'s' * (len(run) > 1)} run: {shown}"
            + (f" (the α/γ search's re-split of `{info.search_of}`)" if info.search_of else "")
        )
    return lines


# How a stage's `sampler` draws its training batches (a config without one: `shuffle`).
SAMPLER_TEXT = {
    "shuffle": "shuffled (every training image once per epoch)",
    "balanced": "balanced (drawn with replacement, probability 1 / its class count)",
}


def _imbalance(configs: list[tuple[Any, dict[str, Any]]]) -> str:
    """The imbalance tools in use: how training batches are drawn (a stage's `sampler`;
    without one, a shuffle of the training images each epoch) and each dataset's α
    weighting of its focal stages (D-2; a list weighs classes)."""
    samplers = _counted(
        [SAMPLER_TEXT.get(c.get("sampler") or "shuffle", c.get("sampler")) for _, c in configs],
        NONE,
    )
    alphas: dict[str, set[str]] = {}
    for unit, config in configs:
        if LOSSES.get(str(config.get("loss"))) and LOSSES[str(config["loss"])].focal:
            alpha = config.get("alpha")
            text = (
                "none"
                if alpha is None
                else f"per class {alpha}"
                if isinstance(alpha, list)
                else f"{alpha:g} (all classes alike: no class weighting)"
            )
            alphas.setdefault(unit.dataset, set()).add(text)
    weighting = "; ".join(f"`{d}` {', '.join(sorted(t))}" for d, t in alphas.items())
    return f"batches {samplers}; α of the focal stages: {weighting or 'no focal stage'}"


def _backbones(study: Study) -> str:
    rows = {r["unit_id"]: r for r in study.results.runs}
    seen: dict[str, set[str]] = {}
    for unit in study.results.train_units:
        size = (rows.get(unit.id) or {}).get("input_size") or unit.spec.get("input_size")
        weights = unit.spec.get("weights", "?")
        text = f"weights `{weights}`, input {size or 'the network default'} px"
        seen.setdefault(unit.backbone, set()).add(text)
    return "; ".join(f"`{b}` ({' / '.join(sorted(t))})" for b, t in seen.items()) or NONE


def _parallelism(study: Study) -> list[str]:
    """The data-parallel units' setup (world size, nodes, process-group backend, per-rank
    throughput), as one line; none where every unit ran as one process (rows from before
    `world_size` existed did: they read as world 1)."""
    runs = study.results.runs
    several = [r for r in runs if int(r.get("world_size") or 1) > 1]
    if not several:
        return []
    # a unit resumed after its last epoch trained nothing in its final attempt: no rate (NaN)
    rates = [
        float(x)
        for r in several
        for x in r.get("rank_images_per_second") or []
        if x is not None and math.isfinite(float(x))
    ]
    line = (
        f"{len(several)} of {len(runs)} units trained data-parallel, each as several "
        f"processes (ranks) with the grid's `batch_size` as the global batch split evenly "
        f"over them: world size {_counted([r.get('world_size') for r in several])}; nodes "
        f"{_counted([r.get('nodes') for r in several])}; process-group backend "
        f"{_counted([r.get('dist_backend') for r in several])}"
    )
    if rates:
        line += (
            f"; per-rank throughput median {median(rates):.1f} images/s (range "
            f"{min(rates):.1f}–{max(rates):.1f} over {len(rates)} ranks)"
        )
    return [line]


def _grid_copy(study: Study) -> str:
    info = study.results.info
    source = f"launched from `{info.get('grid_file', '?')}`"
    copy = study.results.rundir.grid_copy_path
    if copy.is_file():
        return f"[`{copy.name}`](../{copy.name}) in the run dir ({source})"
    return f"no copy kept in this run dir (it predates `{copy.name}`); {source}"


def setup_section(study: Study) -> str:
    """The methods block: training per stage, data handling, protocol, software."""
    configs = _configs(study)
    if not configs:
        return ""
    seeds = sorted({int(c.get("seed") or 0) for _, c in configs})
    requested = _counted([c.get("precision") for _, c in configs], NONE)
    selections = ", ".join(
        f"`{s}`" for s in dict.fromkeys(str(c.get("selection")) for _, c in configs)
    )
    lines = [
        "## Setup",
        "",
        "Training per stage (SGD; every stage re-draws the last layer, and a later stage "
        "starts from the best checkpoint of the stage before it):",
        "",
        _stage_table(study),
        "",
        f"- **Networks**: {_backbones(study)}.",
        f"- **Augmentation**: {AUGMENTATION}.",
        *(f"- **Folds**: {line}." for line in _folds(study)),
        f"- **Class imbalance**: {_imbalance(configs)}.",
        f"- **Model selection**: {selections} (what that means: see above).",
        f"- **Seeds**: {', '.join(str(s) for s in seeds)}"
        + (" (replicates: one unit per fold and seed)." if len(seeds) > 1 else "."),
        *(f"- **Processes per unit**: {line}." for line in _parallelism(study)),
        f"- **Precision**: requested `{requested}`; used: "
        + _recorded(study, "precision_used", "these rows predate the `precision_used` column")
        + ".",
        "- **Deterministic algorithms**: "
        + _recorded(study, "deterministic", "these rows predate the `deterministic` column")
        + ".",
        "- **Software**: tool commit "
        + _recorded(study, "git_commit", "these rows predate the `git_commit` column")
        + f"; fer_core {_recorded(study, 'package_version', 'no version column')}"
        + f"; torch {_recorded(study, 'torch_version', 'no version column')}"
        + f"; Python {_recorded(study, 'python_version', 'no version column')}"
        + "".join(
            f"; {label} {_recorded(study, column, 'these rows predate the column')}"
            for label, column in LIBRARY_COLUMNS
        )
        + ".",
        f"- **Effective grid**: {_grid_copy(study)}.",
        "- **Accuracy**, two definitions: tables and tests use the **fold-mean** accuracy (each "
        "test fold's accuracy, averaged over folds); figure titles and per-class tables use "
        "the **pooled** (micro) accuracy (correct predictions over all test images of those "
        "folds). They differ when folds differ in size or class mix.",
    ]
    return "\n".join(lines)
