"""One training stage, read top to bottom: fit, select the best epoch, checkpoint, resume.

The data is the dataset's cached face crops, held once as a uint8 tensor on the training
device; each step gathers a batch by index and augments it on that device, so no DataLoader
or per-image CPU work sits between the GPU and the next batch. The loss is accumulated on the
device and read back once per epoch (no per-step host synchronisation, unless
`nan_policy="skip"` asks to inspect each step).

Checkpoints (all written atomically, each with its sha256 in `checkpoints.json`):
- `last.pt`: everything needed to resume after the epoch it was written (weights, optimiser,
  RNG states, best-so-far, per-epoch history). A unit killed mid-epoch redoes at most that epoch.
- `last.prev.pt`: the `last.pt` before it. A `last.pt` that fails its checksum or does not
  load (damaged after the fact, truncated by an older version) is not trusted: the unit
  resumes from `last.prev.pt` (one more epoch redone) and starts from scratch only if that
  is bad too. Each fallback is one line on stderr (the unit's log).
- `best.pt`: the weights of the epoch with the highest selection accuracy so far; stage 2
  starts from its parent's `best.pt`. A resume state whose `best.pt` is damaged is dropped
  (the best weights cannot be rebuilt without retraining).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fer_core.config import StageConfig
from fer_core.data.augment import train_transform
from fer_core.errors import FerError
from fer_core.evaluate import Evaluation, evaluate
from fer_core.io import (
    TEMP_PREFIX,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_text,
    sha256_file,
)
from fer_core.losses import build_loss

LAST = "last.pt"
LAST_PREV = "last.prev.pt"  # the resume state one epoch before last.pt
BEST = "best.pt"
DIGESTS = "checkpoints.json"
PROGRESS = "progress.json"  # epochs done, for `status` while a unit runs


@dataclass(frozen=True)
class StageData:
    """Face crops (uint8 N x 3 x S x S) and labels of one stage's three roles."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    select_images: torch.Tensor
    select_labels: torch.Tensor
    num_classes: int

    def to(self, device: torch.device) -> StageData:
        return StageData(
            self.train_images.to(device),
            self.train_labels.to(device),
            self.select_images.to(device),
            self.select_labels.to(device),
            self.num_classes,
        )


@dataclass(frozen=True)
class StageOutcome:
    """What a finished stage hands back: its history and where its best weights are."""

    epochs: list[dict[str, Any]]
    best_epoch: int
    best_selection_accuracy: float
    best_path: Path
    resumed_from_epoch: int
    train_seconds: float
    images_per_second: float
    first_step_at: float  # time.time() of the first optimiser step of this process


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device` (None = plain fp32)."""
    if precision == "fp32" or device.type != "cuda":
        return None
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def load_checkpoint(path: Path, expected_digest: str | None = None) -> dict[str, Any]:
    """Load a checkpoint safely (weights_only) and, when a digest is known, verify it first."""
    path = Path(path)
    if not path.is_file():
        raise FerError(f"{path}: checkpoint not found")
    if expected_digest is not None and sha256_file(path) != expected_digest:
        raise FerError(f"{path}: checkpoint is corrupt (sha256 does not match checkpoints.json)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated file or a pickle payload
        raise FerError(f"{path}: not a loadable checkpoint ({type(exc).__name__})") from exc


def _digests(work_dir: Path) -> dict[str, str]:
    path = work_dir / DIGESTS
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def _write_digests(work_dir: Path, digests: dict[str, str]) -> None:
    atomic_write_text(work_dir / DIGESTS, json.dumps(digests, indent=1, sort_keys=True))


def _save(obj: Any, work_dir: Path, name: str) -> None:
    digest = atomic_torch_save(obj, work_dir / name)
    digests = _digests(work_dir)
    digests[name] = digest
    _write_digests(work_dir, digests)


def _save_last(state: dict[str, Any], work_dir: Path, rotate: bool) -> None:
    """Write last.pt; with `rotate` (last.pt is known good) keep the old one as last.prev.pt.

    last.pt stays in place until the new one replaces it (last.prev.pt is a hard link to it,
    or a copy where links are not supported), and `checkpoints.json` stays true to the files
    at every point a crash could hit: last.prev.pt's digest is recorded before the link, and
    a crash after the new last.pt but before its digest leaves a mismatch: a fallback to prev.
    """
    last, prev = work_dir / LAST, work_dir / LAST_PREV
    digests = _digests(work_dir)
    if rotate and last.is_file() and LAST in digests:
        digests[LAST_PREV] = digests[LAST]
        _write_digests(work_dir, digests)
        link = work_dir / f"{TEMP_PREFIX}{LAST_PREV}.link"
        link.unlink(missing_ok=True)
        try:
            os.link(last, link)
            os.replace(link, prev)
        except OSError:
            link.unlink(missing_ok=True)
            atomic_write_bytes(prev, last.read_bytes())
    _save(state, work_dir, LAST)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _resume_state(work_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The newest good resume state and its file name, or (None, None) to start fresh.

    A state is good if its checksum matches and it loads; last.pt is tried, then
    last.prev.pt. Both rely on best.pt (the best weights so far): if that is damaged,
    nothing can be resumed.
    """
    digests = _digests(work_dir)
    names = [name for name in (LAST, LAST_PREV) if (work_dir / name).exists()]
    if not names:
        return None, None
    try:
        load_checkpoint(work_dir / BEST, digests.get(BEST))
    except FerError as exc:
        _warn(f"starting from scratch: the resume state relies on {BEST}, which is bad: {exc}")
        return None, None
    for name in names:
        try:
            state = load_checkpoint(work_dir / name, digests.get(name))
        except FerError as exc:
            _warn(f"not resuming from {name}: {exc}")
            continue
        if name != LAST:
            _warn(f"resuming from {name} (after epoch {state['epoch'] + 1}) instead of {LAST}")
        return state, name
    _warn("starting from scratch: no good resume state")
    return None, None


def _stage_loss(model_output: Any, target: torch.Tensor, criterion: nn.Module, aux_weight: float):
    if isinstance(model_output, tuple):  # Inception-v3 in training: (main, aux) logits
        logits, aux = model_output
        return criterion(logits, target) + aux_weight * criterion(aux, target)
    return criterion(model_output, target)


def train_stage(
    model: nn.Module,
    data: StageData,
    config: StageConfig,
    work_dir: Path,
    input_size: int,
    device: torch.device,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> StageOutcome:
    """Train `model` (already holding its start weights and fresh head) for one stage.

    Resumes from `work_dir/last.pt` when present. Returns the epoch history and the path of
    the best checkpoint; the caller scores the test set with those weights.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    model.to(device)
    if config.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    amp_dtype = autocast_dtype(config.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    criterion = build_loss(
        config.loss, alpha=config.alpha, gamma=config.gamma, joint_weight=config.joint_weight
    ).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    step_model = torch.compile(model) if config.compile else model

    history: list[dict[str, Any]] = []
    best_accuracy, best_epoch, start_epoch = -1.0, -1, 0
    state, resumed_from = _resume_state(work_dir)
    last_is_good = resumed_from == LAST  # only a verified last.pt becomes last.prev.pt
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history = list(state["history"])
        best_accuracy, best_epoch = state["best_accuracy"], state["best_epoch"]
        start_epoch = state["epoch"] + 1

    data = data.to(device)
    n_train = len(data.train_labels)
    if n_train == 0 or len(data.select_labels) == 0:
        raise FerError("stage data: the training or selection set is empty; check the folds")
    images_seen, busy_seconds, first_step_at = 0, 0.0, math.nan
    for epoch in range(start_epoch, config.epochs):
        lr = config.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_model.train()
        started = time.perf_counter()
        order = torch.randperm(n_train, generator=generator).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        skipped, used = 0, 0
        for start in range(0, n_train, config.batch_size):
            index = order[start : start + config.batch_size]
            batch = train_transform(data.train_images[index], input_size, generator)
            if config.channels_last and device.type == "cuda":
                batch = batch.contiguous(memory_format=torch.channels_last)
            target = data.train_labels[index]
            with torch.autocast(
                device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
            ):
                output = step_model(batch)
                loss = _stage_loss(output, target, criterion, config.aux_weight)
            if config.nan_policy == "skip" and not bool(torch.isfinite(loss)):
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
                continue
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if math.isnan(first_step_at):
                first_step_at = time.time()
            logits = output[0] if isinstance(output, tuple) else output
            loss_sum += loss.detach().float() * len(index)
            correct += (logits.argmax(dim=1) == target).sum()
            used += len(index)
        if used == 0:
            raise FerError(
                f"epoch {epoch + 1}: the loss was not finite for every batch ({skipped} "
                "skipped under nan_policy: skip); the weights have diverged: lower the LR"
            )
        train_loss = float(loss_sum) / used
        if not math.isfinite(train_loss):
            raise FerError(
                f"epoch {epoch + 1}: training loss is {train_loss} (not finite); lower the LR, "
                "or set nan_policy: skip to drop such batches"
            )
        selection = evaluate(
            model,
            data.select_images,
            data.select_labels,
            input_size,
            autocast_dtype=amp_dtype,
            channels_last=config.channels_last and device.type == "cuda",
        )
        busy_seconds += time.perf_counter() - started
        images_seen += n_train
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": train_loss,
            "train_accuracy": float(correct) / used,
            "selection_accuracy": selection.accuracy,
            "skipped_batches": skipped,
            "seconds": time.perf_counter() - started,
            "finished_at": time.time(),  # wall clock: which run of a requeued job did it
        }
        history.append(record)
        if selection.accuracy > best_accuracy:
            best_accuracy, best_epoch = selection.accuracy, epoch + 1
            _save({"model": model.state_dict(), "epoch": epoch + 1}, work_dir, BEST)
        _save_last(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "history": history,
                "best_accuracy": best_accuracy,
                "best_epoch": best_epoch,
                "epoch": epoch,
            },
            work_dir,
            rotate=last_is_good,
        )
        last_is_good = True
        atomic_write_text(
            work_dir / PROGRESS, json.dumps({"epoch": epoch + 1, "epochs": config.epochs})
        )
        if on_epoch is not None:
            on_epoch(record)

    return StageOutcome(
        epochs=history,
        best_epoch=best_epoch,
        best_selection_accuracy=best_accuracy,
        best_path=work_dir / BEST,
        resumed_from_epoch=start_epoch,
        train_seconds=busy_seconds,
        images_per_second=images_seen / busy_seconds if busy_seconds > 0 else math.nan,
        first_step_at=first_step_at,
    )


def load_best(model: nn.Module, work_dir: Path) -> None:
    """Load the stage's best weights into `model`, verifying the recorded digest."""
    work_dir = Path(work_dir)
    state = load_checkpoint(work_dir / BEST, _digests(work_dir).get(BEST))
    model.load_state_dict(state["model"])


def score(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    input_size: int,
    device: torch.device,
    precision: str = "auto",
) -> Evaluation:
    """Score `model` on uint8 crops (moved to `device`) — used for the test fold."""
    return evaluate(
        model.to(device),
        images.to(device),
        labels,
        input_size,
        autocast_dtype=autocast_dtype(precision, device),
    )
