"""The records a unit hands back: one row each of the `runs`, `predictions` and `epochs`
tables and the epoch record its trainer reports as it goes (a training unit), or its row of
the `prepare` table (a data-preparation unit).

Kept apart from `fer_core.unit` and `fer_core.train` and free of torch, so a scheduler can
name these shapes without importing the training stack. Key order is the column order of the
Parquet files the orchestrator writes from them.
"""

from __future__ import annotations

from typing import TypedDict


class EpochRecord(TypedDict):
    """One epoch of a stage: in `last.pt`'s history and handed to `on_epoch`."""

    epoch: int  # 1-based
    lr: float
    train_loss: float
    train_accuracy: float
    selection_accuracy: float
    skipped_batches: int
    seconds: float
    finished_at: float  # time.time(): which run of a requeued job did it


class EpochRow(EpochRecord):
    """A row of the `epochs` table: `unit_id` first, then the epoch record."""

    unit_id: str


class PredictionRow(TypedDict):
    """A row of the `predictions` table: one test image of one unit."""

    unit_id: str
    image_id: str
    subject: str
    label: int
    predicted: int
    label_name: str
    predicted_name: str
    probabilities: list[float]


class RunCore(TypedDict):
    """What a unit's spec, its stage config and its training say about the run."""

    unit_id: str
    parent_id: str | None
    grid: str
    dataset: str
    fold: int
    backbone: str
    strategy: str
    stage: int
    loss: str
    alpha: str | None  # exact decimal, or None
    gamma: float
    selection: str
    seed: int
    epochs: int
    best_epoch: int
    selection_accuracy: float
    test_accuracy: float  # NaN when the test fold was not scored
    mean_class_accuracy: float  # mean of the per-class recalls (fer_core.metrics); NaN idem
    macro_f1: float
    per_class_recall: list[float]  # in `classes` order; NaN for a class with no test image
    test_class_counts: list[int]  # test images per class, in `classes` order
    classes: list[str]  # the dataset's class names, in label order
    n_test: int
    resumed_from_epoch: int
    train_seconds: float
    images_per_second: float
    device: str
    package_version: str
    torch_version: str
    python_version: str
    host: str
    config: str  # the StageConfig as sorted JSON
    started_at: float
    finished_at: float


class LibraryVersions(TypedDict):
    """`fer_core.provenance.library_versions`: columns of the `runs` table."""

    torchvision_version: str | None
    facenet_pytorch_version: str | None
    timm_version: str | None
    numpy_version: str
    cuda_version: str | None  # torch's build; None for a CPU-only torch
    cudnn_version: str | None  # e.g. "91002" (cuDNN 9.10.2), as torch reports it


class RunRow(RunCore, LibraryVersions):
    """A row of the `runs` table as the unit writes it (a scheduler adds its own columns)."""

    input_size: int
    n_train: int
    start_weights_sha: str
    parent_weights_sha: str | None
    parent_best_sha: str | None
    startup_seconds: float
    precision_used: str
    deterministic: bool
    world_size: int  # ranks that trained it data-parallel (D-24); 1: one process
    nodes: int  # nodes those ranks ran on
    dist_backend: str  # the process group's: none (one process), gloo or nccl
    rank_images_per_second: list[float]  # each rank's own training throughput
    git_commit: str | None


class UnitResult(TypedDict):
    """What `fer_core.unit.run_unit` returns."""

    run: RunRow
    predictions: list[PredictionRow]
    epochs: list[EpochRow]


class PrepareRow(TypedDict):
    """A row of the `prepare` table: what a data-preparation unit made of its dataset."""

    unit_id: str
    dataset: str  # the grid's name for it
    kind: str  # ckplus, oulu, manifest
    root: str
    synthetic: bool
    images: int
    subjects: int
    classes: str  # comma-separated, in label order
    fold_rule: str  # how sorted subjects became folds (fer_core.data.folds.FOLD_RULES)
    detector: str
    crop_size: int
    detected: int
    fallback: int
    reused: int
    fingerprint: str
    skipped: str  # JSON {reason: count}: rows the dataset marks as no expression
    prepared_at: float
