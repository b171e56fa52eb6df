"""Focal / joint losses against hand computations, and their error messages."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fer_core.errors import FerError
from fer_core.losses import (
    CrossEntropyLoss,
    FocalLoss,
    JointLoss,
    build_loss,
    focal_loss,
    inverse_frequency_alpha,
)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 7, generator=generator, dtype=torch.float64) * 3
    target = torch.randint(0, 7, (16,), generator=generator)
    return logits, target


def hand_focal(logits, target, alpha, gamma):
    """The paper's formula, one sample at a time, in float64."""
    losses = []
    for row, t in zip(logits.double(), target.tolist(), strict=True):
        p = torch.softmax(row, 0)[t].item()
        a = 1.0 if alpha is None else (alpha if isinstance(alpha, float) else alpha[t])
        losses.append(-a * (1 - p) ** gamma * math.log(p))
    return torch.tensor(losses, dtype=torch.float64)


def test_gamma0_no_alpha_is_cross_entropy(batch):
    logits, target = batch
    expected = F.cross_entropy(logits, target)
    assert torch.allclose(focal_loss(logits, target), expected, atol=1e-6)


def test_gamma0_scalar_alpha_is_alpha_times_ce(batch):
    logits, target = batch  # the paper's CK+ setting: alpha 0.25, gamma 0
    expected = 0.25 * F.cross_entropy(logits, target)
    assert torch.allclose(focal_loss(logits, target, alpha=0.25, gamma=0.0), expected, atol=1e-6)


def test_per_class_alpha_matches_hand_computation(batch):
    logits, target = batch
    alpha = [0.1, 0.2, 0.3, 0.4, 0.5, 1.0, 2.0]
    hand = hand_focal(logits, target, alpha, 1.5)
    got = focal_loss(logits, target, alpha=alpha, gamma=1.5, reduction="none")
    assert torch.allclose(got.double(), hand, rtol=1e-5)
    # mean is the plain batch mean, not torch's weight-normalised mean
    mean = focal_loss(logits, target, alpha=torch.tensor(alpha), gamma=1.5)
    assert math.isclose(mean.item(), hand.mean().item(), rel_tol=1e-5)


def test_gamma2_matches_hand_computation(batch):
    logits, target = batch
    hand = hand_focal(logits, target, 0.5, 2.0)
    got = focal_loss(logits, target, alpha=0.5, gamma=2.0, reduction="none")
    assert torch.allclose(got.double(), hand, rtol=1e-5)


@pytest.mark.parametrize("margin", [50.0, 200.0, 1e-3])
def test_gradient_finite_for_gamma_below_one(margin):
    # margin 50: p_t = 1 - 1e-22; 200: p_t rounds to exactly 1; 1e-3: p_t ~ 1/C.
    logits = torch.zeros(4, 6)
    target = torch.tensor([0, 1, 2, 3])
    logits[torch.arange(4), target] = margin
    logits.requires_grad_(True)
    loss = focal_loss(logits, target, gamma=0.5)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()


def test_gradient_matches_autograd_of_naive_form_where_that_is_safe(batch):
    logits, target = batch
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    focal_loss(a, target, gamma=0.5).backward()
    p = torch.softmax(b, 1).gather(1, target[:, None]).squeeze(1)
    (-((1 - p) ** 0.5) * torch.log(p)).mean().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-10)


def test_reductions(batch):
    logits, target = batch
    none = focal_loss(logits, target, gamma=2.0, reduction="none")
    assert none.shape == (16,)
    total = focal_loss(logits, target, gamma=2.0, reduction="sum")
    mean = focal_loss(logits, target, gamma=2.0, reduction="mean")
    assert math.isclose(total.item(), 16 * mean.item(), rel_tol=1e-5)
    with pytest.raises(FerError, match="reduction: 'avg'"):
        focal_loss(logits, target, reduction="avg")


@pytest.mark.parametrize(
    ("alpha", "fragment"),
    [
        (0, "alpha: 0 "),
        (0.0, "alpha: null"),
        (-0.1, "alpha: -0.1"),
        (1.5, "alpha: 1.5"),
        (float("nan"), "alpha: nan"),
        (True, "alpha: True"),
        ("0.25", "alpha: '0.25'"),
        ([0.5, float("nan"), 0.5], r"alpha\[1\]: nan"),
        ([0.5, 0.0, 0.5], r"alpha\[1\]: 0.0"),
        ([0.5, -1.0], r"alpha\[1\]: -1.0"),
        ([[0.5, 0.5]], "flat list"),
    ],
)
def test_bad_alpha_names_the_value(batch, alpha, fragment):
    logits, target = batch
    with pytest.raises(FerError, match=fragment):
        focal_loss(logits, target, alpha=alpha)
    with pytest.raises(FerError, match=fragment):
        build_loss("focal", alpha=alpha)


def test_alpha_vector_of_wrong_length(batch):
    logits, target = batch
    with pytest.raises(FerError, match="alpha: 3 per-class weights given for 7 classes"):
        focal_loss(logits, target, alpha=[0.5, 0.5, 0.5])
    loss = build_loss("focal", alpha=[0.5, 0.5, 0.5])  # C is known only at the first batch
    with pytest.raises(FerError, match="alpha: 3 per-class"):
        loss(logits, target)


@pytest.mark.parametrize("gamma", [-0.5, float("nan"), float("inf"), "2", None])
def test_bad_gamma_names_the_value(batch, gamma):
    logits, target = batch
    with pytest.raises(FerError, match=f"gamma: {gamma!r}"):
        focal_loss(logits, target, gamma=gamma)
    with pytest.raises(FerError, match="gamma"):
        FocalLoss(gamma=gamma)


def test_focal_module_matches_function_and_moves_alpha(batch):
    logits, target = batch
    alpha = [0.3, 0.6, 1.0, 0.2, 0.9, 0.4, 0.5]
    module = FocalLoss(alpha=alpha, gamma=0.5)
    expected = focal_loss(logits, target, alpha=alpha, gamma=0.5)
    assert torch.allclose(module(logits, target), expected)
    assert "alpha_vector" in dict(module.named_buffers())
    assert module.state_dict() == {}  # hyper-parameters, not weights


def test_joint_is_ce_plus_weighted_focal(batch):
    logits, target = batch
    ce = F.cross_entropy(logits, target)
    focal = focal_loss(logits, target, alpha=0.25, gamma=2.0)
    assert torch.allclose(build_loss("joint", alpha=0.25, gamma=2.0)(logits, target), ce + focal)
    weighted = JointLoss(alpha=0.25, gamma=2.0, weight=0.3)(logits, target)
    assert torch.allclose(weighted, ce + 0.3 * focal)
    got = build_loss("joint", alpha=0.25, gamma=2.0, joint_weight=0.3)(logits, target)
    assert torch.allclose(got, weighted)
    for bad in (-1.0, float("nan")):
        with pytest.raises(FerError, match="joint_weight"):
            build_loss("joint", joint_weight=bad)


def test_registry(batch):
    logits, target = batch
    assert isinstance(build_loss("ce"), CrossEntropyLoss)
    assert isinstance(build_loss("focal", gamma=0.5), FocalLoss)
    assert isinstance(build_loss("joint"), JointLoss)
    assert torch.allclose(build_loss("ce")(logits, target), F.cross_entropy(logits, target))
    with pytest.raises(FerError, match="'hinge' is unknown; known losses: ce, focal, joint"):
        build_loss("hinge")
    with pytest.raises(FerError, match="loss ce: alpha=0.25"):
        build_loss("ce", alpha=0.25)
    with pytest.raises(FerError, match="gamma=2"):
        build_loss("ce", gamma=2)


def test_bf16_logits_are_computed_in_float32(batch):
    logits, target = batch
    got = focal_loss(logits.bfloat16(), target, gamma=0.5)
    assert got.dtype == torch.float32
    expected = focal_loss(logits.bfloat16().float(), target, gamma=0.5)
    assert torch.allclose(got, expected)


def test_inverse_frequency_alpha():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 20)
    alpha = inverse_frequency_alpha(labels, 4)
    assert alpha == pytest.approx([0.5, 1.0, 0.25, 1.0])  # class 3 absent: weight irrelevant
    assert all(isinstance(a, float) for a in alpha)
    FocalLoss(alpha=alpha)  # valid as a per-class alpha
    assert inverse_frequency_alpha([1, 1, 0], 2) == pytest.approx([1.0, 0.5])
    with pytest.raises(FerError, match="labels: value 4 is outside 0..3"):
        inverse_frequency_alpha([0, 4], 4)
    with pytest.raises(FerError, match="labels: empty"):
        inverse_frequency_alpha([], 4)


# ------------------------------------------------------------------ soft targets (D-14)
@pytest.mark.parametrize("name", ["ce", "focal", "joint"])
def test_a_one_hot_soft_target_is_the_hard_target(batch, name):
    logits, target = batch
    params = {} if name == "ce" else {"alpha": [0.2, 0.4, 1, 0.5, 0.3, 0.8, 0.6], "gamma": 0.5}
    loss = build_loss(name, **params)
    one_hot = F.one_hot(target, 7).to(logits.dtype)
    assert torch.allclose(loss(logits, one_hot), loss(logits, target), atol=1e-12)


def test_soft_focal_matches_hand_computation(batch):
    logits, _ = batch
    generator = torch.Generator().manual_seed(1)
    q = torch.rand(16, 7, generator=generator, dtype=torch.float64)
    q[:, 3] = 0  # a class nobody voted for contributes nothing
    q = q / q.sum(dim=1, keepdim=True)
    alpha, gamma = torch.linspace(0.2, 1.0, 7, dtype=torch.float64), 2.0
    p = logits.softmax(dim=1)
    expected = -(q * alpha * (1 - p) ** gamma * p.log()).sum(dim=1).mean()
    got = focal_loss(logits, q, alpha=alpha.tolist(), gamma=gamma)
    assert torch.allclose(got, expected, atol=1e-10)
    ce = CrossEntropyLoss()(logits, q)
    assert torch.allclose(ce, -(q * p.log()).sum(dim=1).mean(), atol=1e-10)


def test_soft_focal_gradient_is_finite_for_gamma_below_one():
    logits = torch.tensor([[60.0, 0.0, 0.0]], requires_grad=True)  # p -> 1 for class 0
    q = torch.tensor([[0.7, 0.3, 0.0]])
    focal_loss(logits, q, gamma=0.5).backward()
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())


def test_a_soft_target_of_the_wrong_shape_is_refused(batch):
    logits, _ = batch
    with pytest.raises(FerError, match=r"target \(16, 6\)"):
        focal_loss(logits, torch.full((16, 6), 1 / 6, dtype=logits.dtype))
