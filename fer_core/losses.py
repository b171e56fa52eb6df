"""The stage losses of the paper: cross-entropy, focal loss, and both together (METHOD.md §1).

The implementations; which losses exist, and what each takes, is `fer_core.loss_registry`.

Focal loss is `-α_t (1 - p_t)^γ log p_t`. It is computed from `log_softmax`, never from
`log(softmax + eps)`, and the modulating factor `(1 - p_t)^γ` is formed so that its gradient
stays finite when p_t -> 1 with γ < 1 (the paper's Oulu-CASIA setting is γ = 0.5), where the
naive form yields `0 * inf = NaN`.

α is validated by `fer_core.loss_registry.check_alpha` (its semantics, docs/METHOD.md D-2,
are described there); here a per-class α may also be a 1-D tensor.

With `reduction="mean"` the loss is the plain mean over the batch, also with per-class α.
This follows the paper's per-sample formula; note that `torch.nn.CrossEntropyLoss(weight=...)`
instead divides by the sum of the weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fer_core.errors import FerError
from fer_core.loss_registry import (
    check_alpha,
    check_gamma,
    check_joint_weight,
    check_loss_params,
    loss_spec,
)

Alpha = float | Sequence[float] | torch.Tensor | None
REDUCTIONS = ("mean", "sum", "none")


def _check_alpha(alpha: object) -> float | torch.Tensor | None:
    """α validated once (`check_alpha`); a per-class α becomes a CPU float32 tensor."""
    checked = check_alpha(alpha)
    return torch.tensor(checked, dtype=torch.float32) if isinstance(checked, list) else checked


def _check_reduction(reduction: object) -> str:
    if reduction not in REDUCTIONS:
        raise FerError(f"reduction: {reduction!r} is not one of {', '.join(REDUCTIONS)}")
    return str(reduction)


def _at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 logits (autocast) are upcast: log-probabilities near 0 need the precision."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _focal(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float | torch.Tensor | None,
    gamma: float,
    reduction: str,
) -> torch.Tensor:
    """Focal loss with already validated arguments (no host synchronisation).

    `target` is N class indices, or an N x C soft target (rows summing to 1): then the loss
    is `-sum_c q_c α_c (1 - p_c)^γ log p_c`, which is the hard one for a one-hot q
    (docs/METHOD.md D-14)."""
    soft = target.ndim == 2 and target.shape == logits.shape
    if logits.ndim != 2 or not (soft or target.ndim == 1) or target.shape[0] != logits.shape[0]:
        raise FerError(
            f"focal loss: logits {tuple(logits.shape)} and target {tuple(target.shape)} "
            "must be N x C and N (or N x C soft targets)"
        )
    logp = F.log_softmax(_at_least_float32(logits), dim=1)
    logp_t = logp if soft else logp.gather(1, target[:, None]).squeeze(1)
    loss = -logp_t
    if gamma != 0:
        one_minus_p = (-torch.expm1(logp_t)).clamp(min=0)
        # Where 1 - p_t is exactly 0 the factor is 0, but d(x^γ)/dx = inf there for γ < 1, and
        # inf * 0 = NaN; feed pow a harmless base there and select 0 (the "double where").
        positive = one_minus_p > 0
        safe = torch.where(positive, one_minus_p, torch.ones_like(one_minus_p))
        loss = loss * torch.where(positive, safe.pow(gamma), torch.zeros_like(safe))
    if isinstance(alpha, torch.Tensor):
        if alpha.numel() != logits.shape[1]:
            raise FerError(
                f"alpha: {alpha.numel()} per-class weights given for {logits.shape[1]} classes; "
                "give one weight per class"
            )
        weights = alpha.to(device=loss.device)
        loss = loss * (weights if soft else weights[target])
    elif alpha is not None:
        loss = loss * alpha
    if soft:
        loss = (loss * target.to(loss.dtype)).sum(dim=1)
    return _reduce(loss, reduction)


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: Alpha = None,
    gamma: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """`-α_t (1 - p_t)^γ log p_t` of N x C `logits` against N class indices `target` (or
    N x C soft targets: the q-weighted sum over classes, docs/METHOD.md D-14).

    γ = 0 and α = None give exactly the cross-entropy; γ = 0 and a scalar α give α × CE (the
    paper's CK+ setting α = 0.25, γ = 0 is 0.25 × CE). See the module docstring for α.
    """
    return _focal(
        logits, target, _check_alpha(alpha), check_gamma(gamma), _check_reduction(reduction)
    )


class FocalLoss(nn.Module):
    """Focal loss as a module; α and γ are validated once, a per-class α follows `.to(device)`."""

    def __init__(self, alpha: Alpha = None, gamma: float = 0.0, reduction: str = "mean") -> None:
        super().__init__()
        checked = _check_alpha(alpha)
        self.gamma = check_gamma(gamma)
        self.reduction = _check_reduction(reduction)
        self.alpha_scalar: float | None = None
        self.alpha_vector: torch.Tensor | None
        if isinstance(checked, torch.Tensor):
            self.register_buffer("alpha_vector", checked, persistent=False)
        else:
            self.alpha_vector = None
            self.alpha_scalar = checked

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha_vector if self.alpha_vector is not None else self.alpha_scalar
        return _focal(logits, target, alpha, self.gamma, self.reduction)

    def extra_repr(self) -> str:
        alpha = self.alpha_vector.tolist() if self.alpha_vector is not None else self.alpha_scalar
        return f"alpha={alpha}, gamma={self.gamma}, reduction={self.reduction!r}"


class CrossEntropyLoss(nn.Module):
    """The paper's CE stage loss: `-log p_t`, computed like the focal loss (float32
    log_softmax); against N x C soft targets `-sum_c q_c log p_c` (torch's own form)."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = _check_reduction(reduction)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(_at_least_float32(logits), target, reduction=self.reduction)


class JointLoss(nn.Module):
    """CE and focal loss in one stage: `ce + weight × focal`.

    Decision D-1 (docs/METHOD.md): the paper gives no weighting; the default is the plain sum.
    """

    def __init__(
        self,
        alpha: Alpha = None,
        gamma: float = 0.0,
        weight: float = 1.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.weight = check_joint_weight(weight)
        self.ce = CrossEntropyLoss(reduction)
        self.focal = FocalLoss(alpha, gamma, reduction)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce: torch.Tensor = self.ce(logits, target)
        focal: torch.Tensor = self.focal(logits, target)
        return ce + self.weight * focal


def build_loss(
    name: str, alpha: Alpha = None, gamma: float = 0.0, joint_weight: float = 1.0
) -> nn.Module:
    """The registered stage loss `name` (`fer_core.loss_registry.LOSSES`), mean reduction.

    A setting the loss does not take is refused where it would silently change the unit's
    identity (`LossParam.refused_unused`: α and γ on `ce`).
    """
    values = {"alpha": alpha, "gamma": gamma, "joint_weight": joint_weight}
    return loss_spec(name).build(check_loss_params(name, values))


def inverse_frequency_alpha(labels: torch.Tensor | Sequence[int], num_classes: int) -> list[float]:
    """Per-class α = inverse class frequency of `labels`, scaled so the largest entry is 1.

    A plain list of floats, so it can go into a config (and its hash) as is. A class absent
    from `labels` never is a target in that training set, so its weight cannot matter; it
    gets 1.0 rather than infinity.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise FerError(f"num_classes: {num_classes!r} must be a positive integer")
    values = torch.as_tensor(labels).reshape(-1).long().cpu()
    if values.numel() == 0:
        raise FerError("labels: empty; inverse-frequency alpha needs the training labels")
    bad = (values < 0) | (values >= num_classes)
    if bool(bad.any()):
        raise FerError(
            f"labels: value {int(values[bad][0])} is outside 0..{num_classes - 1} "
            f"for num_classes={num_classes}"
        )
    counts = torch.bincount(values, minlength=num_classes).double()
    present = counts > 0
    inverse = torch.where(present, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
    alpha = torch.where(present, inverse / inverse.max(), torch.ones_like(counts))
    return [float(a) for a in alpha]
