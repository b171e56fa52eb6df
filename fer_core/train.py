"""One training stage, read top to bottom: fit, select the best epoch, checkpoint, resume.

The data is the dataset's cached face crops, held once as a uint8 tensor on the training
device, or for a large dataset read batch by batch from the on-disk crop store by worker
processes (`fer_core.data.store`); each step gathers a batch by index and augments it on the
device, so no per-image CPU work sits between the GPU and the next batch. The loss is
accumulated on the device and read back once per epoch (no per-step host synchronisation,
unless `nan_policy="skip"` asks to inspect each step).

Checkpoints (`last.pt`, `last.prev.pt`, `best.pt`, their digests, resume and fallback) are
`fer_core.checkpoints`; this module decides when to write them.

Data-parallel (D-24): every rank of a unit's process group (`fer_core.distributed`) draws the
same epoch order and the same augmentation from the unit's seed, and takes its even share
of each global batch of `batch_size` images; DistributedDataParallel averages the gradients.
So a step of W ranks is the step one process takes on the whole batch, up to float rounding
(and per-rank BatchNorm statistics, unless `sync_batchnorm`). The selection set is scored
in shards and gathered, each image once; only rank 0 writes files.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

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
from fer_core.data.augment import augment, sample_params
from fer_core.data.store import CropStore
from fer_core.distributed import Group
from fer_core.errors import FerError
from fer_core.evaluate import Evaluation, predict
from fer_core.heap import fix_mmap_threshold
from fer_core.io import atomic_write_text
from fer_core.losses import build_loss
from fer_core.ranks import Ranks
from fer_core.records import EpochRecord
from fer_core.runtime import use_determinism, use_precision

PROGRESS = "progress.json"  # epochs done, for `status` while a unit runs
LOADER_WORKERS = 2  # processes reading batches from the on-disk crop store
SCORE_ROWS = 4096  # crops per read when scoring from the on-disk store


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
    world_size: int  # ranks of the unit that wrote it (absent before D-24: 1)
    rank_rng: list[RngState]  # each rank's global RNGs, in rank order (`rng` is rank 0's)


@dataclass(frozen=True)
class StageData:
    """A dataset's crops (uint8 N x 3 x S x S, in memory or the on-disk store) and labels, and
    the rows of one stage's training and selection roles. Roles are row indices, not copies:
    a unit holds the crops once (in memory) or not at all (the store: batches are read by
    index), so its memory does not grow with the dataset."""

    images: torch.Tensor | CropStore
    labels: torch.Tensor  # int64 N
    train_rows: torch.Tensor  # int64, rows of the training role
    select_rows: torch.Tensor  # int64, rows of the selection role
    num_classes: int
    targets: torch.Tensor | None = None  # N x C soft targets of every row; None: the labels

    @classmethod
    def from_masks(
        cls,
        images: torch.Tensor | CropStore,
        labels: torch.Tensor,
        train: torch.Tensor,
        select: torch.Tensor,
        num_classes: int,
        targets: torch.Tensor | None = None,
    ) -> StageData:
        """The roles given as bool masks over the dataset's rows."""
        train_rows, select_rows = train.nonzero().flatten(), select.nonzero().flatten()
        return cls(images, labels, train_rows, select_rows, num_classes, targets)

    @property
    def train_labels(self) -> torch.Tensor:
        return self.labels[self.train_rows]

    @property
    def select_labels(self) -> torch.Tensor:
        return self.labels[self.select_rows]


def epoch_order(labels: torch.Tensor, sampler: str, generator: torch.Generator) -> torch.Tensor:
    """Positions in the training role (0..n-1) in the order one epoch visits them.

    `shuffle` (the paper): a random permutation. `balanced` (D-20): n draws with replacement,
    each position with probability proportional to 1 / (its class's count in `labels`), the
    training role's labels, so every present class is drawn equally often in expectation.
    """
    n = len(labels)
    if sampler == "shuffle":
        return torch.randperm(n, generator=generator)
    counts = torch.bincount(labels)
    weights = 1.0 / counts[labels].double()
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def global_batches(order: torch.Tensor, batch_size: int, world: int) -> list[torch.Tensor]:
    """An epoch's global batches (positions in the training role): `batch_size` at a time in
    `order`; with several ranks a last batch too small to give each rank an image is left
    out (at most world - 1 images of the epoch)."""
    steps = list(torch.split(order, batch_size))
    if world > 1 and steps and len(steps[-1]) < world:
        steps.pop()
    return steps


def rank_share(batch: torch.Tensor, group: Group) -> tuple[int, torch.Tensor]:
    """This rank's even share of a global batch: (offset of its first image, its images)."""
    parts = torch.tensor_split(batch, group.world)
    return sum(len(part) for part in parts[: group.rank]), parts[group.rank]


def batches(
    images: torch.Tensor | CropStore,
    chunks: list[torch.Tensor],
    device: torch.device,
) -> Iterator[torch.Tensor]:
    """The uint8 crops of each chunk of rows, on `device`, in order.

    In-memory crops (already on `device`) are indexed there. From the on-disk store, worker
    processes (`LOADER_WORKERS`) read the next batches while the device trains on this one;
    only those few batches are ever in memory. Both give the same crops in the same order.
    """
    if isinstance(images, torch.Tensor):
        for chunk in chunks:
            yield images[chunk.to(images.device)]
        return
    if not chunks:
        return
    loader = torch.utils.data.DataLoader(
        _StoreRows(images, chunks),
        batch_size=None,
        num_workers=min(LOADER_WORKERS, len(chunks)),
        pin_memory=device.type == "cuda",
        prefetch_factor=4,
        # the loader seeds its workers from this, not from the global RNG, which dropout
        # draws from: both paths then train identically (workers draw nothing random)
        generator=torch.Generator(),
    )
    for batch in loader:
        yield batch.to(device, non_blocking=True)


class _StoreRows(torch.utils.data.Dataset[torch.Tensor]):
    """Batch k = the crops of `chunks[k]`, read from the store (in a worker process)."""

    def __init__(self, store: CropStore, chunks: list[torch.Tensor]):
        self.store, self.chunks = store, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int) -> torch.Tensor:
        rows = self.chunks[k]
        out = torch.empty((len(rows), *self.store.shape[1:]), dtype=torch.uint8)
        # read straight into shared memory: the loader hands it over without another copy
        shared: torch.Tensor = out.share_memory_()  # type: ignore[no-untyped-call]  # torch
        return self.store.gather(rows.numpy(), shared)


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
    rank_images_per_second: list[float]  # each rank's own images per busy second


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
    group: Group | None = None,
) -> StageOutcome:
    """Train `model` (already holding its start weights and fresh head) for one stage, as
    one rank of `group` (default: a one-process unit).

    Resumes from `work_dir/last.pt` when present. Returns the epoch history and the path of
    the best checkpoint; the caller scores the test set with those weights. Only rank 0
    writes into `work_dir` and calls `on_epoch`; every rank returns once `best.pt` is final.
    """
    group = group or Group(Ranks())
    if config.batch_size % group.world:
        raise FerError(
            f"batch_size {config.batch_size} does not split evenly over {group.world} ranks "
            "(it is the global batch: D-24)"
        )
    if config.sync_batchnorm and group.distributed and device.type != "cuda":
        raise FerError(
            "sync_batchnorm: true needs CUDA devices (torch's SyncBatchNorm runs on GPUs "
            "only); on CPU ranks BatchNorm is per rank"
        )
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    use_determinism(config.deterministic)
    use_precision(config.precision)
    fix_mmap_threshold()  # before the first batch: see fer_core.heap
    # Every global RNG starts from the seed (torch's seeds CUDA too); a resume then restores
    # them all, so a resumed unit draws what an uninterrupted one would have. Each rank's
    # own stream (dropout) starts apart; the epoch order and augmentation come from
    # `generator`, the same on every rank.
    rank_seed = config.seed + 1_000_003 * group.rank
    random.seed(rank_seed)
    np.random.seed(rank_seed)
    torch.manual_seed(rank_seed)
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    if config.sync_batchnorm and group.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]
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

    history: list[EpochRecord] = []
    best_accuracy, best_epoch, start_epoch = -1.0, -1, 0
    state, resumed_from = resume_state(work_dir)
    last_is_good = resumed_from == LAST  # only a verified last.pt becomes last.prev.pt
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        generator.set_state(state["generator"])
        written_by = state.get("world_size", 1)
        if written_by != group.world:
            raise FerError(
                f"{work_dir / LAST} was written by a unit of {written_by} ranks, and this "
                f"attempt has {group.world}: re-launch with the profile it started with, or "
                f"delete {work_dir} to start the unit over"
            )
        if "rank_rng" in state:
            set_global_rng_state(state["rank_rng"][group.rank])
        elif "rng" in state:
            set_global_rng_state(state["rng"])
        else:  # a last.pt written before every RNG was saved: torch's CPU state only
            torch.set_rng_state(state["torch_rng"])
        history = list(state["history"])
        best_accuracy, best_epoch = state["best_accuracy"], state["best_epoch"]
        start_epoch = state["epoch"] + 1
    starts = group.gather_objects(start_epoch)
    if len(set(starts)) > 1:  # the ranks must resume one state (rank 0 wrote it)
        raise FerError(f"the ranks found different resume states in {work_dir}: epochs {starts}")
    step_model: nn.Module = model
    if group.distributed:
        step_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:  # torch.compile of a Module is a Module (its annotation: Callable)
        step_model = cast(nn.Module, torch.compile(step_model))

    n_train = len(data.train_rows)
    if n_train == 0 or len(data.select_rows) == 0:
        raise FerError("stage data: the training or selection set is empty; check the folds")
    images = data.images.to(device) if isinstance(data.images, torch.Tensor) else data.images
    train_labels = data.train_labels.to(device)
    # soft targets (FERPlus `probability`) replace the labels in the loss, not in accuracy
    train_targets = None if data.targets is None else data.targets[data.train_rows].to(device)
    images_seen, mine_seen, busy_seconds, first_step_at = 0, 0, 0.0, math.nan
    for epoch in range(start_epoch, config.epochs):
        group.epoch = epoch + 1
        lr = config.lr_at(epoch)
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr
        step_model.train()
        started = time.perf_counter()
        order = epoch_order(data.train_labels, config.sampler, generator)
        # per rank: loss summed over its images, images right, images used
        sums = torch.zeros(3, device=device, dtype=torch.float64)
        skipped = 0
        steps = global_batches(order, config.batch_size, group.world)
        shares = [rank_share(step, group) for step in steps]
        crops = batches(images, [data.train_rows[share] for _, share in shares], device)
        for step, (offset, share), crop in zip(steps, shares, crops, strict=True):
            # the global batch's draws, this rank's part of them (as one process would draw)
            params = sample_params(len(step), generator).part(offset, offset + len(share))
            batch = augment(crop, input_size, params)
            if config.channels_last and device.type == "cuda":
                batch = batch.contiguous(memory_format=torch.channels_last)
            index = share.to(device)
            target = train_labels[index] if train_targets is None else train_targets[index]
            with torch.autocast(
                device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
            ):
                output = step_model(batch)
                loss = _stage_loss(output, target, criterion, config.aux_weight)
            if config.nan_policy == "skip" and not _all_finite(loss, group):
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
                continue
            optimizer.zero_grad(set_to_none=True)
            # DDP averages the ranks' gradients; weighting each rank's mean loss by its share
            # of the batch makes that average the whole batch's mean (uneven last batch)
            weight = len(share) * group.world / len(step)
            scaler.scale(loss * weight).backward()  # type: ignore[no-untyped-call]  # torch
            scaler.step(optimizer)
            scaler.update()
            if math.isnan(first_step_at):
                first_step_at = time.time()
            logits = output[0] if isinstance(output, tuple) else output
            sums[0] += loss.detach().double() * len(share)
            sums[1] += (logits.argmax(dim=1) == train_labels[index]).sum()
            sums[2] += len(share)
        mine_seen += int(sums[2])
        loss_total, correct, used = (float(v) for v in group.all_sum(sums))
        if used == 0:
            raise FerError(
                f"epoch {epoch + 1}: the loss was not finite for every batch ({skipped} "
                "skipped under nan_policy: skip); the weights have diverged: lower the LR"
            )
        train_loss = loss_total / used
        if not math.isfinite(train_loss):
            raise FerError(
                f"epoch {epoch + 1}: training loss is {train_loss} (not finite); lower the LR, "
                "or set nan_policy: skip to drop such batches"
            )
        group.broadcast_buffers(model)  # score (and save) rank 0's BatchNorm statistics
        selection = score_rows(
            model,
            images,
            data.select_rows,
            data.select_labels,
            input_size,
            device,
            autocast_dtype=amp_dtype,
            channels_last=config.channels_last and device.type == "cuda",
            group=group,
        )
        busy_seconds += time.perf_counter() - started
        images_seen += int(used)
        record: EpochRecord = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": train_loss,
            "train_accuracy": correct / used,
            "selection_accuracy": selection.accuracy,
            "skipped_batches": skipped,
            "seconds": time.perf_counter() - started,
            "finished_at": time.time(),  # wall clock: which run of a requeued job did it
        }
        history.append(record)
        rank_rng = group.gather_objects(global_rng_state())
        if config.final_epoch == "last" or selection.accuracy > best_accuracy:
            best_accuracy, best_epoch = selection.accuracy, epoch + 1
            if group.leader:
                best: BestCheckpoint = {"model": model.state_dict(), "epoch": epoch + 1}
                save(best, work_dir, BEST)
        if not group.leader:
            continue
        last: ResumeState = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "generator": generator.get_state(),
            "rng": rank_rng[0],
            "history": history,
            "best_accuracy": best_accuracy,
            "best_epoch": best_epoch,
            "epoch": epoch,
            "world_size": group.world,
            "rank_rng": rank_rng,
        }
        save_last(last, work_dir, rotate=last_is_good)
        last_is_good = True
        atomic_write_text(
            work_dir / PROGRESS, json.dumps({"epoch": epoch + 1, "epochs": config.epochs})
        )
        if on_epoch is not None:
            on_epoch(record)

    group.barrier()  # rank 0's best.pt is written: every rank may load it now
    seconds = busy_seconds if busy_seconds > 0 else math.nan
    return StageOutcome(
        epochs=history,
        best_epoch=best_epoch,
        best_selection_accuracy=best_accuracy,
        best_path=work_dir / BEST,
        resumed_from_epoch=start_epoch,
        train_seconds=busy_seconds,
        images_per_second=images_seen / seconds,
        first_step_at=first_step_at,
        precision_used=precision_used(amp_dtype, device),
        rank_images_per_second=[float(v) for v in group.gather_objects(mine_seen / seconds)],
    )


def _all_finite(loss: torch.Tensor, group: Group) -> bool:
    """True when every rank's loss is finite: the ranks skip a batch together, or none does
    (one rank skipping its backward would leave the others waiting in DDP's all-reduce)."""
    finite = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
    return bool(group.all_min(finite))


def score(
    model: nn.Module,
    images: torch.Tensor | CropStore,
    rows: torch.Tensor,
    labels: torch.Tensor,
    input_size: int,
    device: torch.device,
    precision: str = "auto",
    group: Group | None = None,
) -> Evaluation:
    """Score `model` on crops `rows` of `images` against `labels` — used for the test set
    (sharded over `group`'s ranks, each image once)."""
    group = group or Group(Ranks())
    if isinstance(images, torch.Tensor):
        images = images[group.shard(rows)]
        rows = torch.arange(len(rows))
    return score_rows(
        model.to(device),
        images.to(device) if isinstance(images, torch.Tensor) else images,
        rows,
        labels,
        input_size,
        device,
        autocast_dtype=autocast_dtype(precision, device),
        group=group,
        sharded=isinstance(images, torch.Tensor),
    )


def score_rows(
    model: nn.Module,
    images: torch.Tensor | CropStore,
    rows: torch.Tensor,
    labels: torch.Tensor,
    input_size: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    group: Group | None = None,
    sharded: bool = False,
) -> Evaluation:
    """Score `model` on crops `rows` of `images` (in memory on `device`, or the store: read
    `SCORE_ROWS` at a time, so scoring holds no more of the set than that). With several
    ranks each scores its shard of `rows` (`sharded`: `images` holds that shard already)
    and the probabilities are gathered: every rank gets all of them, each image once."""
    group = group or Group(Ranks())
    mine = torch.arange(len(images)) if sharded else group.shard(rows)
    chunk = max(len(mine), 1) if isinstance(images, torch.Tensor) else SCORE_ROWS
    parts = [
        predict(
            model, crops, input_size, autocast_dtype=autocast_dtype, channels_last=channels_last
        )
        for crops in batches(images, list(torch.split(mine, chunk)), device)
    ]
    probabilities = torch.cat(parts) if parts else predict(model, images[mine[:0]], input_size)
    probabilities = group.gather_rows(probabilities, len(rows))
    return Evaluation(probabilities, probabilities.argmax(dim=1), labels.cpu().long())
