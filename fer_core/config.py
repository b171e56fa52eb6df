"""The hyper-parameters of one training stage, validated once, before anything runs.

Defaults are the paper's (docs/METHOD.md section 5): SGD momentum 0.9, weight decay 1e-3,
batch 32, LR 0.01, 80 epochs, LR x0.1 after epoch 60. Decision D-10 (docs/METHOD.md): stage 1
uses the same schedule as stage 2, because the paper only gives stage 1's initial LR.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from fer_core.errors import FerError
from fer_core.loss_registry import LOSS_PARAMS, Alpha, check_loss_params, loss_spec

SELECTIONS = ("heldout", "inner")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
FINAL_EPOCHS = ("best", "last")
NAN_POLICIES = ("fail", "skip")
SAMPLERS = ("shuffle", "balanced")
# keys added after ids were first issued: left out of a spec at their default (StageConfig.to_dict)
LATER_KEYS = {
    "deterministic": False,
    "final_epoch": "best",
    "sampler": "shuffle",
    "sync_batchnorm": False,
}


@dataclass(frozen=True)
class StageConfig:
    """One stage's loss and optimisation settings (a stage of a strategy chain).

    `loss` names a `fer_core.loss_registry.LOSSES` entry; `alpha`, `gamma` and `joint_weight`
    are its `LOSS_PARAMS` (validated there, without torch: a grid loads without it).
    """

    loss: str = "ce"
    alpha: Alpha = None
    gamma: float = 0.0
    joint_weight: float = 1.0
    aux_weight: float = 0.4
    epochs: int = 80
    lr: float = 0.01
    lr_step_epoch: int | None = 60
    lr_decay: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-3
    batch_size: int = 32
    selection: str = "heldout"
    seed: int = 0
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    nan_policy: str = "fail"
    deterministic: bool = False  # deterministic kernels only (fer_core.runtime.use_determinism)
    # Which epoch's weights the stage keeps (`best.pt`, scored and passed on): the best on the
    # selection subset, or the last one, which nothing picks (D-14). Grids set it for a
    # chain's final stage only (the grid's top-level `final_epoch`).
    final_epoch: str = "best"
    sampler: str = "shuffle"  # how training batches are drawn (fer_core.train.epoch_order)
    # A unit of several ranks normalises each BatchNorm over the whole global batch (torch's
    # SyncBatchNorm, GPUs only) rather than over each rank's share (D-24).
    sync_batchnorm: bool = False

    def __post_init__(self) -> None:
        loss_spec(self.loss)
        _check_choice("selection", self.selection, SELECTIONS)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("nan_policy", self.nan_policy, NAN_POLICIES)
        _check_choice("final_epoch", self.final_epoch, FINAL_EPOCHS)
        _check_choice("sampler", self.sampler, SAMPLERS)
        _check_positive_int("epochs", self.epochs)
        _check_positive_int("batch_size", self.batch_size)
        for key in ("lr", "lr_decay"):
            _check_positive_float(key, getattr(self, key))
        for key in ("momentum", "weight_decay", "aux_weight"):
            value = getattr(self, key)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise FerError(f"{key}: {value!r} must be a finite number >= 0")
        if self.lr_step_epoch is not None:
            _check_positive_int("lr_step_epoch", self.lr_step_epoch)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise FerError(f"seed: {self.seed!r} must be an integer")
        for key in ("deterministic", "sync_batchnorm", "channels_last", "compile"):
            if not isinstance(getattr(self, key), bool):
                raise FerError(f"{key}: {getattr(self, key)!r} must be true or false")
        check_loss_params(self.loss, {key: getattr(self, key) for key in LOSS_PARAMS})

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "stage") -> StageConfig:
        """Build from a mapping, rejecting unknown keys by name (typos must not pass)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise FerError(
                f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The values that identify a stage (units hash them). A key added after ids were
        first issued appears only when set away from its default, so adding it leaves every
        existing unit's id, and so its results, in place."""
        values = asdict(self)
        for key, default in LATER_KEYS.items():
            if values[key] == default:
                del values[key]
        return values

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 0-based `epoch`: x lr_decay once `lr_step_epoch` epochs are done."""
        if self.lr_step_epoch is not None and epoch >= self.lr_step_epoch:
            return self.lr * self.lr_decay
        return self.lr


def _check_choice(key: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise FerError(f"{key}: {value!r} is not one of {', '.join(choices)}")


def _check_positive_int(key: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FerError(f"{key}: {value!r} must be a positive integer")


def _check_positive_float(key: str, value: object) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise FerError(f"{key}: {value!r} must be a finite number > 0")
