"""One training stage, read top to bottom: fit, select the best epoch, checkpoint, resume.

The data is the dataset's cached face crops, held once as a uint8 tensor on the training
device; each step gathers a batch by index and augments it on that device, so no DataLoader
or per-image CPU work sits between the GPU and the next batch. The loss is accumulated on the
device and read back once per epoch (no per-step host synchronisation, unless
`nan_policy="skip"` asks to inspect each step).

Checkpoints (`last.pt`, `last.prev.pt`, `best.pt`, their digests, resume and fallback) are
`fer_core.checkpoints`; this module decides when to write them.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

import numpy as np
import torch
from torch import nn

from fer_core.checkpoints import (
    BEST,
    LAST,
    RngState,
    global_rng_state,
    resume_state,
    save,
    save_last,
    set_global_rng_state,
)
from fer_core.config import StageConfig
from fer_core.data.augment import train_transform
from fer_core.errors import FerError
from fer_core.evaluate import Evaluation, evaluate
from fer_core.io import atomic_write_text
from fer_core.losses import build_loss
from fer_core.records import EpochRecord
from fer_core.runtime import use_determinism, use_precision

PROGRESS = "progress.json"  # epochs done, for `status` while a unit runs


class BestCheckpoint(TypedDict):
    """`best.pt`: the weights of the best epoch so far."""

    model: dict[str, torch.Tensor]
    epoch: int


class ResumeState(TypedDict):
    """`last.pt`: everything needed to resume after `epoch` (0-based) as if never stopped.
    (A `last.pt` of an older version may hold `torch_rng`, torch's CPU state, for `rng`.)"""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # torch's own nested state dicts
    scaler: dict[str, Any]
    generator: torch.Tensor
    rng: RngState
    history: list[EpochRecord]
    best_accuracy: float
    best_epoch: int
    epoch: int


@dataclass(frozen=True)
class StageData:
    """Face crops (uint8 N x 3 x S x S) and labels of one stage's three roles."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    select_images: torch.Tensor
    select_labels: torch.Tensor
    num_classes: int
    train_targets: torch.Tensor | None = None  # N x C soft targets; None: train on labels

    def to(self, device: torch.device) -> StageData:
        return StageData(
            self.train_images.to(device),
            self.train_labels.to(device),
            self.select_images.to(device),
            self.select_labels.to(device),
            self.num_classes,
            None if self.train_targets is None else self.train_targets.to(device),
        )


@dataclass(frozen=True)
class StageOutcome:
    """What a finished stage hands back: its history and where its best weights are."""

    epochs: list[EpochRecord]
    best_epoch: int
    best_selection_accuracy: float
    best_path: Path
    resumed_from_epoch: int
    train_seconds: float
    images_per_second: float
    first_step_at: float  # time.time() of the first optimiser step of this process
    precision_used: str  # what `precision` resolved to here (see precision_used)


def precision_used(dtype: torch.dtype | None, device: torch.device) -> str:
    """What arithmetic a stage ran in: `bf16` or `fp16` (autocast), `fp32`, or `tf32`: fp32
    weights and activations whose convolutions cuDNN runs in TF32 on tensor cores (torch's
    default on Ampere and later GPUs, about 10 mantissa bits)."""
    if dtype is not None:
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    if (
        device.type == "cuda"
        and torch.backends.cudnn.allow_tf32
        and torch.cuda.get_device_capability(device)[0] >= 8
    ):
        return "tf32"
    return "fp32"


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device` (None = plain fp32)."""
    if precision == "fp32" or device.type != "cuda":
        return None
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def _stage_loss(
    model_output: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    target: torch.Tensor,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    aux_weight: float,
) -> torch.Tensor:
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
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> StageOutcome:
    """Train `model` (already holding its start weights and fresh head) for one stage.

    Resumes from `work_dir/last.pt` when present. Returns the epoch history and the path of
    the best checkpoint; the caller scores the test set with those weights.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    use_determinism(config.deterministic)
    use_precision(config.precision)
    # Every global RNG starts from the seed (torch's seeds CUDA too); a resume then restores
    # them all, so a resumed unit draws what an uninterrupted one would have.
    random.seed(config.seed)
    np.random.seed(config.seed)
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
    # torch.compile of a Module is a Module (OptimizedModule); its annotation says Callable
    step_model = cast(nn.Module, torch.compile(model)) if config.compile else model

    history: list[EpochRecord] = []
    best_accuracy, best_epoch, start_epoch = -1.0, -1, 0
    state, resumed_from = resume_state(work_dir)
    last_is_good = resumed_from == LAST  # only a verified last.pt becomes last.prev.pt
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        generator.set_state(state["generator"])
        if "rng" in state:
            set_global_rng_state(state["rng"])
        else:  # a last.pt written before every RNG was saved: torch's CPU state only
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
            targets = data.train_labels if data.train_targets is None else data.train_targets
            target = targets[index]
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
            scaler.scale(loss).backward()  # type: ignore[no-untyped-call]  # torch: unannotated
            scaler.step(optimizer)
            scaler.update()
            if math.isnan(first_step_at):
                first_step_at = time.time()
            logits = output[0] if isinstance(output, tuple) else output
            loss_sum += loss.detach().float() * len(index)
            correct += (logits.argmax(dim=1) == data.train_labels[index]).sum()
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
        record: EpochRecord = {
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
        if config.final_epoch == "last" or selection.accuracy > best_accuracy:
            best_accuracy, best_epoch = selection.accuracy, epoch + 1
            best: BestCheckpoint = {"model": model.state_dict(), "epoch": epoch + 1}
            save(best, work_dir, BEST)
        last: ResumeState = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "generator": generator.get_state(),
            "rng": global_rng_state(),
            "history": history,
            "best_accuracy": best_accuracy,
            "best_epoch": best_epoch,
            "epoch": epoch,
        }
        save_last(last, work_dir, rotate=last_is_good)
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
        precision_used=precision_used(amp_dtype, device),
    )


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
