"""A training unit: one stage of one strategy chain on one fold — the scheduler's unit of work.

`run_unit(spec, work_dir)` is the single entry point a worker (subprocess, SLURM job, Ray
trial) calls. It takes a `UnitSpec` (plain data: the unit's canonical config and the paths
of its inputs) and returns plain rows (the `runs`, `predictions` and `epochs` tables), so the
orchestrator never handles tensors. A unit of several ranks (D-24) calls it on every rank:
the ranks train and score together, and rank 0 alone returns the rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil
import torch

import fer_core
from fer_core.checkpoints import BEST, DIGESTS, load_best, load_verified_best
from fer_core.config import StageConfig
from fer_core.data.faces import FaceSet
from fer_core.data.protocol import Holdout, Roles, fixed_roles, kfold_roles
from fer_core.distributed import Group, is_collective_error, process_group
from fer_core.errors import FerError
from fer_core.evaluate import Evaluation
from fer_core.inference.card import write_card
from fer_core.models import FerNet, backbone_spec, build_model
from fer_core.provenance import git_commit, library_versions
from fer_core.records import EpochRecord, PredictionRow, RunCore, RunRow, UnitResult
from fer_core.spec import UnitSpec
from fer_core.train import StageData, StageOutcome, score, train_stage


def weights_digest(model: FerNet) -> str:
    """sha256 of the non-head weights: shows that stage 2 started from its parent's best."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        if key.startswith(tuple(model.head_prefixes)):
            continue
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def roles(faces: FaceSet, spec: UnitSpec, selection: str) -> Roles:
    """Which crops train, select and test this unit, by its protocol
    (`fer_core.data.protocol`); the data must be of that protocol's kind."""
    fixed = any(faces.splits)
    if spec.protocol == "fixed":
        if not fixed:
            raise FerError(
                f"dataset {faces.dataset}: protocol fixed needs a split per image (train, "
                "val, test), but this dataset has subject folds; use protocol: kfold"
            )
        found = fixed_roles(
            faces.splits,
            faces.labels,
            selection,
            Holdout(spec.holdout_fraction, spec.holdout_seed),
        )
    else:
        if fixed:
            raise FerError(
                f"dataset {faces.dataset}: it has a fixed train/val/test split of its own "
                "and no folds; use protocol: fixed"
            )
        found = kfold_roles(faces.folds, spec.fold, spec.n_folds, selection)
    for role in ("train", "select", "test"):
        if not bool(getattr(found, role).any()):
            raise FerError(
                f"{spec.dataset} ({spec.protocol}, fold {spec.fold}): no {role} images; "
                "check the folds or the split"
            )
    return found


def stage_data(faces: FaceSet, found: Roles) -> StageData:
    """The crops and labels of the training and selection roles."""
    return StageData.from_masks(
        faces.images, faces.labels, found.train, found.select, len(faces.classes), faces.targets
    )


def process_started_at() -> float:
    """Wall-clock start of this process (for the start-up overhead figure), to a clock tick.

    The kernel's start time (/proc/self/stat, ticks since boot) set against the boot clock
    now. Not psutil's `create_time()`: it adds those ticks to the boot time in whole seconds
    (/proc/stat's btime), which puts the start up to 1 s early, more than a forked worker's
    whole start-up. psutil only where there is no /proc.
    """
    try:
        stat = Path("/proc/self/stat").read_text()
    except OSError:
        return psutil.Process(os.getpid()).create_time()
    ticks = int(stat.rsplit(")", 1)[1].split()[19])
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - age


def run_unit(
    spec: UnitSpec,
    work_dir: str | Path,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    score_test: bool = True,
) -> UnitResult | None:
    """Train and score one unit; returns {"run": {...}, "predictions": [...], "epochs": [...]}.

    `on_epoch` sees each epoch's record (a tuner reports it); `score_test=False` leaves the
    test fold untouched (a search trial must not see it: nested cross-validation), and the
    result then has no predictions and a NaN test accuracy. In a unit of several ranks
    (`fer_core.distributed`) rank 0 returns the result and calls `on_epoch`; the other ranks
    return None. A rank that stops answering fails the others with a FerError naming it.
    """
    process_start = process_started_at()
    started_at = time.time()
    config = StageConfig.from_dict(spec.config, where=f"unit {spec.unit_id}")
    with process_group(spec.device) as (group, device):
        try:
            return _run(
                spec,
                Path(work_dir),
                config,
                group,
                device,
                on_epoch,
                score_test,
                (
                    process_start,
                    started_at,
                ),
            )
        except FerError:
            raise
        except Exception as exc:
            if group.distributed and is_collective_error(exc):
                raise group.failure(exc) from exc
            raise


def _run(
    spec: UnitSpec,
    work_dir: Path,
    config: StageConfig,
    group: Group,
    device: torch.device,
    on_epoch: Callable[[EpochRecord], None] | None,
    score_test: bool,
    times: tuple[float, float],
) -> UnitResult | None:
    """`run_unit` as rank `group.rank` of the unit's group, on `device`."""
    process_start, started_at = times
    faces = FaceSet.load(Path(spec.data_dir))
    input_size = spec.input_size or backbone_spec(spec.backbone).input_size

    # Randomly initialised layers draw from the global RNG: seed it, so a unit's start weights
    # depend on its seed only, not on what ran before in this process (a reused Ray actor).
    torch.manual_seed(config.seed)
    model = build_model(
        spec.backbone, len(faces.classes), weights="none" if spec.parent_dir else spec.weights
    )
    parent_digest: str | None = None
    parent_best_sha: str | None = None
    if spec.parent_dir:
        parent_best, parent_best_sha = _parent_best(spec, spec.parent_dir)
        model.load_state_dict(parent_best["model"])
        parent_digest = weights_digest(model)
    model.reset_head(torch.Generator().manual_seed(config.seed + spec.stage))
    start_digest = weights_digest(model)

    found = roles(faces, spec, config.selection)
    data = stage_data(faces, found)
    outcome = train_stage(
        model, data, config, work_dir, input_size, device, on_epoch if group.leader else None, group
    )
    load_best(model, work_dir)
    if group.leader:
        write_card(work_dir, asdict(spec), faces.classes, input_size)
    test = found.test  # touched here for the first time (but under heldout)
    if not score_test:
        test = torch.zeros_like(test)
    result = score(
        model,
        faces.images,
        test.nonzero().flatten(),
        faces.labels[test],
        input_size,
        device,
        config.precision,
        group,
    )
    if not group.leader:
        return None
    finished_at = time.time()
    run: RunRow = {
        **_run_row(spec, config, outcome, result, faces.classes, device, started_at, finished_at),
        "input_size": input_size,
        "n_train": len(data.train_labels),
        "start_weights_sha": start_digest,
        "parent_weights_sha": parent_digest,
        "parent_best_sha": parent_best_sha,
        "startup_seconds": outcome.first_step_at - process_start,
        "precision_used": outcome.precision_used,
        "deterministic": config.deterministic,
        "world_size": group.world,
        "nodes": group.ranks.nodes,
        "dist_backend": group.backend,
        "rank_images_per_second": outcome.rank_images_per_second,
        "git_commit": git_commit(),
        **library_versions(),
    }
    test_ids = [i for i, t in zip(faces.image_ids, test.tolist(), strict=True) if t]
    test_subjects = [s for s, t in zip(faces.subjects, test.tolist(), strict=True) if t]
    return {
        "run": run,
        "predictions": _prediction_rows(
            spec.unit_id, result, test_ids, test_subjects, faces.classes
        ),
        "epochs": [{"unit_id": spec.unit_id, **epoch} for epoch in outcome.epochs],
    }


def _parent_best(spec: UnitSpec, parent_dir: str) -> tuple[dict[str, Any], str]:
    """The parent's best weights, only if they are the file its training recorded: a swapped
    or damaged `best.pt` must not silently become this stage's start."""
    try:
        return load_verified_best(Path(parent_dir))
    except FerError as exc:
        raise FerError(
            f"parent unit {spec.parent_id}: {exc}; its {BEST} must be the file its training "
            f"recorded in {DIGESTS}: re-launch, and the parent is retrained first"
        ) from None


def _run_row(
    spec: UnitSpec,
    config: StageConfig,
    outcome: StageOutcome,
    result: Evaluation,
    classes: list[str],
    device: torch.device,
    started_at: float,
    finished_at: float,
) -> RunCore:
    alpha = config.alpha
    scored = result.metrics()
    return {
        "unit_id": spec.unit_id,
        "parent_id": spec.parent_id,
        "grid": spec.grid,
        "dataset": spec.dataset,
        "fold": spec.fold,
        "backbone": spec.backbone,
        "strategy": spec.strategy,
        "stage": spec.stage,
        "loss": config.loss,
        "alpha": None if alpha is None else str(alpha),
        "gamma": float(config.gamma),
        "selection": config.selection,
        "seed": config.seed,
        "epochs": config.epochs,
        "best_epoch": outcome.best_epoch,
        "selection_accuracy": outcome.best_selection_accuracy,
        "test_accuracy": scored.accuracy,
        "mean_class_accuracy": scored.mean_class_accuracy,
        "macro_f1": scored.macro_f1,
        "per_class_recall": scored.per_class_recall,
        "test_class_counts": [int(n) for n in result.confusion().sum(dim=1).tolist()],
        "classes": list(classes),
        "n_test": len(result.labels),
        "resumed_from_epoch": outcome.resumed_from_epoch,
        "train_seconds": outcome.train_seconds,
        "images_per_second": outcome.images_per_second,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "package_version": fer_core.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "host": socket.gethostname(),
        "config": json.dumps(asdict(config), sort_keys=True),
        "started_at": started_at,
        "finished_at": finished_at,
    }


def _prediction_rows(
    unit_id: str,
    result: Evaluation,
    image_ids: list[str],
    subjects: list[str],
    classes: list[str],
) -> list[PredictionRow]:
    rows: list[PredictionRow] = []
    probabilities = result.probabilities.tolist()
    for i, image_id in enumerate(image_ids):
        rows.append(
            {
                "unit_id": unit_id,
                "image_id": image_id,
                "subject": subjects[i],
                "label": int(result.labels[i]),
                "predicted": int(result.predicted[i]),
                "label_name": classes[int(result.labels[i])],
                "predicted_name": classes[int(result.predicted[i])],
                "probabilities": probabilities[i],
            }
        )
    return rows
