"""Every stage loss by name, and every hyper-parameter a loss can take: the one place a loss
is declared (docs/METHOD.md §1).

The rest of the code derives from `LOSSES` and `LOSS_PARAMS`: `StageConfig` validates a
stage with them, a grid's strategies (`ce>focal`) are checked against them, the tune
command offers stage-2 losses from them, the report orders and describes strategies with
them. This module imports no torch (a grid loads, and the orchestrator plans, without it);
each loss's `build` imports its implementation (`fer_core.losses`) only when called.

Adding a loss: one `LossSpec` entry below (its builder may compose the modules of
`fer_core.losses`; new math goes there). Adding a hyper-parameter: one `LossParam` entry and
the `StageConfig` field of the same name (which stays out of unit ids at its default).

α semantics (docs/METHOD.md D-2), checked here without torch:
- `None`: no class weighting.
- a scalar in (0, 1]: multiplies every class (the paper's formula). The paper's Oulu-CASIA
  "α = 0" would make the loss identically zero; this project reads it as "no weighting" and
  rejects a literal 0 so nobody trains on a zero loss by accident: write `alpha: null`.
- a per-class list (one entry per class): relative class weights, each finite and > 0 (no
  upper bound: only their ratios and overall scale matter).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fer_core.errors import FerError

if TYPE_CHECKING:
    from torch import nn

Alpha = float | list[float] | None  # a validated α


def check_alpha(alpha: object) -> Alpha:
    """α as validated: None, a float in (0, 1], or a list of finite weights > 0.

    Array-likes (a tensor, a numpy array) are read through their `tolist()`.
    """
    if alpha is None:
        return None
    if isinstance(alpha, bool | str | bytes):
        raise FerError(f"alpha: {alpha!r} must be null, a number in (0, 1] or a list of weights")
    tolist = getattr(alpha, "tolist", None)
    value = tolist() if callable(tolist) else alpha
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        if number == 0:
            raise FerError(
                "alpha: 0 would make the focal loss identically zero; the paper's 'alpha = 0' "
                "means no class weighting here: use alpha: null"
            )
        if not math.isfinite(number) or not 0 < number <= 1:
            raise FerError(f"alpha: {alpha!r} must be in (0, 1] (or null for no weighting)")
        return number
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise FerError(f"alpha: {alpha!r} must be null, a number in (0, 1] or a list of weights")
    if any(not isinstance(v, int | float | Sequence) or isinstance(v, str) for v in value):
        raise FerError(f"alpha: {alpha!r} is not a list of numbers")
    if not value or any(isinstance(v, Sequence) for v in value):
        raise FerError(f"alpha: {alpha!r} must be a flat list with one weight per class")
    weights = [float(v) for v in value]
    for index, weight in enumerate(weights):
        if not math.isfinite(weight) or weight <= 0:
            raise FerError(
                f"alpha[{index}]: {weight!r} must be a finite weight > 0 "
                "(per-class alpha entries are relative class weights)"
            )
    return weights


def _non_negative(key: str) -> Callable[[object], float]:
    def check(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FerError(f"{key}: {value!r} must be a finite number >= 0")
        if not math.isfinite(value) or value < 0:
            raise FerError(f"{key}: {value!r} must be a finite number >= 0")
        return float(value)

    return check


check_gamma = _non_negative("gamma")
check_joint_weight = _non_negative("joint_weight")


@dataclass(frozen=True)
class LossParam:
    """A stage setting some losses take (a `StageConfig` field of the same name).

    `refused_unused`: a value away from `default` on a loss that does not take it is an
    error, since it would change the unit's id (and so its dedup) with no effect. False for a
    setting a grid gives every stage at once (`train: {joint_weight: ...}` must not break
    its `ce` stages); such a value is still range-checked.
    `label` and `spec` (a format spec for numbers) say how the report writes a value.
    """

    name: str
    default: Any
    check: Callable[[object], object]
    refused_unused: bool
    label: str
    spec: str = ""

    def text(self, value: object) -> str:
        """`α 0.25`, `α none`, `γ 0.5` (the report's methods table)."""
        shown = "none" if value is None else format(value, self.spec)
        return f"{self.label} {shown}"


LOSS_PARAMS: dict[str, LossParam] = {
    param.name: param
    for param in (
        LossParam("alpha", None, check_alpha, True, "α"),  # class weighting (D-2)
        LossParam("gamma", 0.0, check_gamma, True, "γ", "g"),  # the focusing parameter
        # the weight of the focal term of `joint` (D-1)
        LossParam("joint_weight", 1.0, check_joint_weight, False, "focal weight", "g"),
    )
}
FOCAL_PARAMS = ("alpha", "gamma")  # what a dataset's `focal:` block gives its focal stages


@dataclass(frozen=True)
class LossSpec:
    """A stage loss: its name (as written in strategies), the `LOSS_PARAMS` it takes, what
    it is called in prose, and how to build it from validated parameters (mean reduction)."""

    name: str
    params: tuple[str, ...]
    title: str
    build: Callable[[Mapping[str, Any]], nn.Module]

    @property
    def focal(self) -> bool:
        """Takes α and γ: a dataset's `focal:` block applies, and a search can set them."""
        return all(p in self.params for p in FOCAL_PARAMS)


def _cross_entropy(params: Mapping[str, Any]) -> nn.Module:
    from fer_core.losses import CrossEntropyLoss

    return CrossEntropyLoss()


def _focal(params: Mapping[str, Any]) -> nn.Module:
    from fer_core.losses import FocalLoss

    return FocalLoss(params["alpha"], params["gamma"])


def _joint(params: Mapping[str, Any]) -> nn.Module:
    from fer_core.losses import JointLoss

    return JointLoss(params["alpha"], params["gamma"], params["joint_weight"])


LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        LossSpec("ce", (), "cross-entropy", _cross_entropy),
        LossSpec("focal", ("alpha", "gamma"), "focal loss", _focal),
        # Decision D-1 (docs/METHOD.md): CE and focal in one stage, `ce + weight x focal`.
        LossSpec("joint", ("alpha", "gamma", "joint_weight"), "ce + focal", _joint),
    )
}


def loss_spec(name: object) -> LossSpec:
    """The registered loss `name`, or a FerError listing the known ones."""
    spec = LOSSES.get(name) if isinstance(name, str) else None
    if spec is None:
        raise FerError(f"loss: {name!r} is unknown; known losses: {', '.join(LOSSES)}")
    return spec


def check_loss_params(name: object, values: Mapping[str, object]) -> dict[str, object]:
    """Validate a stage's loss settings (`values`: every key of `LOSS_PARAMS`, as given) for
    loss `name`; returns them validated. One line naming the key and value on a fault."""
    spec = loss_spec(name)
    checked = {key: param.check(values[key]) for key, param in LOSS_PARAMS.items()}
    refused = [k for k, p in LOSS_PARAMS.items() if k not in spec.params and p.refused_unused]
    if any(not _is_default(values[key], LOSS_PARAMS[key]) for key in refused):
        given = ", ".join(f"{key}={values[key]!r}" for key in refused)
        takers = " / ".join(s.name for s in LOSSES.values() if set(refused) <= set(s.params))
        raise FerError(
            f"loss {spec.name}: {given} have no effect on {spec.title}; "
            f"leave them unset or use loss {takers}"
        )
    return checked


def _is_default(value: object, param: LossParam) -> bool:
    return value is None if param.default is None else bool(value == param.default)
