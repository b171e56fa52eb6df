"""Deterministic-safe pooling (fer_core.models.pool_windows, avg_pool): the plain average pool
that replaces an adaptive one gives the adaptive pool's numbers, the backbones pool through
it at the map sizes their specs declare, and which (backbone, input size) pairs a
`deterministic: true` grid must refuse. CUDA's refusal itself cannot run here: the decision
is checked on CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fer_core.models.avg_pool import AvgPoolTo, avg_pool_to
from fer_core.models.backbones import BACKBONES
from fer_core.models.pool_windows import deterministic_problem, uniform_windows


@pytest.mark.parametrize(("size", "out"), [(s, o) for s in range(1, 20) for o in (1, 2, 5, 7)])
def test_avg_pool_to_gives_the_adaptive_pools_numbers(size, out):
    x = torch.randn(2, 3, size, size + 1, generator=torch.Generator().manual_seed(size))
    expected = F.adaptive_avg_pool2d(x, out)
    assert torch.allclose(avg_pool_to(x, out), expected, atol=1e-6)


def test_uniform_windows_are_plain_pools_and_uneven_ones_are_not():
    assert uniform_windows(7, 7) == (1, 1)  # VGG-16 at 224 px: no pooling at all
    assert uniform_windows(14, 7) == (2, 2)
    assert uniform_windows(3, 2) == (2, 1)  # the tiny CNN at 48 px: overlapping windows
    assert uniform_windows(9, 7) is None  # VGG-16 at 299 px
    assert uniform_windows(8, 5) is None
    assert uniform_windows(1, 7) is None  # a map smaller than the output: cells repeated


def _pool_inputs(model: torch.nn.Module, size: int) -> list[tuple[int, int]]:
    """(map size, output size) entering each AvgPoolTo of `model` on a `size` px input."""
    seen: list[tuple[int, int]] = []
    for module in model.modules():
        if isinstance(module, AvgPoolTo):
            module.register_forward_hook(lambda m, args, _: seen.append((args[0].shape[-1], m.out)))
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return seen


@pytest.mark.parametrize("size", [32, 48, 61, 64])
def test_the_tiny_cnn_pools_at_the_size_its_spec_declares(size):
    spec = BACKBONES["tiny"]
    assert _pool_inputs(spec.build().eval(), size) == list(spec.adaptive_pools(size))


@pytest.mark.parametrize("size", [64, 224, 299])
def test_vgg16_pools_at_the_size_its_spec_declares(size):
    features = BACKBONES["vgg_face"].build()
    trunk = torch.nn.Sequential(features.features, features.avgpool)  # skip the 100M-wide FCs
    assert _pool_inputs(trunk, size) == list(BACKBONES["vgg_face"].adaptive_pools(size))


@pytest.mark.parametrize(
    ("backbone", "size", "safe"),
    [
        ("vgg_face", 224, True),
        ("vgg_face", 299, False),
        ("vgg_face", 448, True),
        ("vgg_face", 40, False),  # a 1 x 1 map repeated to 7 x 7
        ("tiny", 48, True),  # to 2 x 2 the windows are always even (mirror images)
        ("tiny", 139, True),
        ("inception_v3", 299, True),
        ("inception_v3", 160, False),
        ("resnet18", 123, True),
        ("inception_resnet_v1", 97, True),
    ],
)
def test_which_backbones_train_deterministically_at_which_size(backbone, size, safe):
    assert (deterministic_problem(BACKBONES[backbone], size) is None) == safe
