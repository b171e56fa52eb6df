"""The loss registry: every registered loss builds and gives a gradient, and its settings are
checked (without torch) the same way by StageConfig and build_loss."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from fer_core.config import StageConfig
from fer_core.errors import FerError
from fer_core.loss_registry import LOSSES, check_alpha, check_loss_params
from fer_core.losses import build_loss

SETTINGS: dict[str, Any] = {"alpha": [0.5, 1.0, 0.25], "gamma": 2.0, "joint_weight": 0.5}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_registered_loss_builds_and_gives_a_gradient(name: str) -> None:
    spec = LOSSES[name]
    given = {key: SETTINGS[key] for key in spec.params}
    loss = build_loss(name, **given)
    logits = torch.randn(8, 3, requires_grad=True, generator=torch.Generator().manual_seed(0))
    value = loss(logits, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value)
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())
    assert StageConfig(loss=name, **given).to_dict()["loss"] == name


def test_settings_a_loss_does_not_take() -> None:
    for key in ("alpha", "gamma"):  # would change the unit's id with no effect: refused
        with pytest.raises(FerError) as info:
            StageConfig(loss="ce", **{key: SETTINGS[key]})
        assert str(info.value).startswith("loss ce: alpha=")
        assert str(info.value).endswith("use loss focal / joint")
    StageConfig(loss="ce", joint_weight=0.5)  # a grid-wide setting: ignored, still checked
    with pytest.raises(FerError, match="joint_weight: -1 must be a finite number >= 0"):
        StageConfig(loss="focal", joint_weight=-1)


def test_focal_losses_are_those_taking_alpha_and_gamma() -> None:
    assert [n for n, s in LOSSES.items() if s.focal] == ["focal", "joint"]


def test_alpha_is_checked_without_torch_but_reads_array_likes() -> None:
    assert check_alpha(torch.tensor([0.5, 1.0])) == [0.5, 1.0]
    assert check_alpha(np.array([2, 1])) == [2.0, 1.0]
    assert check_alpha(torch.tensor(0.25)) == 0.25
    assert check_alpha((1, 3)) == [1.0, 3.0]
    with pytest.raises(FerError, match="flat list"):
        check_alpha(torch.ones(2, 2))
    with pytest.raises(FerError, match="is not a list of numbers"):
        check_alpha([0.1, "x"])
    with pytest.raises(FerError, match="must be null, a number"):
        check_alpha({"a": 1})


def test_check_returns_the_validated_settings() -> None:
    values = {"alpha": (1, 2), "gamma": 1, "joint_weight": 2}
    assert check_loss_params("joint", values) == {
        "alpha": [1.0, 2.0],
        "gamma": 1.0,
        "joint_weight": 2.0,
    }
    with pytest.raises(FerError, match="loss: 'hinge' is unknown; known losses: ce, focal, joint"):
        check_loss_params("hinge", values)
