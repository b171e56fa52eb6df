"""Batched augmentation on whatever device the batch lives on.

Why: the paper's per-epoch augmentation (resize, horizontal flip p=0.5, vertical flip p=0.5,
rotation within +-10 degrees) is usually done per image on the CPU with PIL, which starves a
GPU. Here the whole batch is resized once, then flipped and rotated by one affine grid with
per-sample parameters (`F.affine_grid` + `F.grid_sample`, bilinear, zero padding) — the same
geometry as torchvision's Resize -> RandomHorizontalFlip -> RandomVerticalFlip ->
RandomRotation, in the same order (`bench/throughput.py` times that usual per-image pipeline
against this one).

Inputs are N x C x H x W (C = 3, or 1 for grey, repeated), uint8 or float **on the 0..255
scale** (a float copy of uint8 pixels gives the same result); outputs are float32,
normalised with the ImageNet mean and std the pre-trained backbones expect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fer_core.errors import FerError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
P_HFLIP = 0.5
P_VFLIP = 0.5
MAX_DEGREES = 10.0
Size = int | tuple[int, int]


@dataclass(frozen=True)
class AugmentParams:
    """Per-sample draws: flips (bool N) and rotation angles in degrees (float N; positive is
    counter-clockwise on screen, as torchvision's `rotate`)."""

    hflip: torch.Tensor
    vflip: torch.Tensor
    angle: torch.Tensor

    def part(self, start: int, stop: int) -> AugmentParams:
        """The draws of samples start..stop-1: a rank's share of its global batch's draws,
        so a data-parallel step augments each image as one process would (D-24)."""
        return AugmentParams(self.hflip[start:stop], self.vflip[start:stop], self.angle[start:stop])


def sample_params(
    n: int,
    generator: torch.Generator | None = None,
    p_hflip: float = P_HFLIP,
    p_vflip: float = P_VFLIP,
    max_degrees: float = MAX_DEGREES,
) -> AugmentParams:
    """Draw `n` samples' parameters from `generator` (on the generator's device), so a seeded
    generator gives the same augmentation on every run."""
    device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(n, 3, generator=generator, device=device)
    return AugmentParams(
        hflip=u[:, 0] < p_hflip,
        vflip=u[:, 1] < p_vflip,
        angle=(u[:, 2] * 2 - 1) * max_degrees,
    )


def train_transform(
    x: torch.Tensor,
    out_size: Size,
    generator: torch.Generator | None,
    p_hflip: float = P_HFLIP,
    p_vflip: float = P_VFLIP,
    max_degrees: float = MAX_DEGREES,
) -> torch.Tensor:
    """Resize, random flips and rotation, normalise: the paper's training augmentation."""
    return augment(x, out_size, sample_params(x.shape[0], generator, p_hflip, p_vflip, max_degrees))


def augment(x: torch.Tensor, out_size: Size, params: AugmentParams) -> torch.Tensor:
    """`train_transform` with its draws given (one per sample of `x`)."""
    return normalize(apply_affine(resize(_to_unit(x), out_size), params))


def test_transform(x: torch.Tensor, out_size: Size) -> torch.Tensor:
    """Resize and normalise. (The paper's "centre crop" is of the same size as the resize, so
    it crops nothing once the face crop is square: docs/METHOD.md D-8.)"""
    return normalize(resize(_to_unit(x), out_size))


# a library function, not a test, wherever pytest imports it (pytest reads `__test__`)
test_transform.__dict__["__test__"] = False


def resize(x: torch.Tensor, out_size: Size) -> torch.Tensor:
    """Bilinear resize of a float batch; antialiased, so shrinking matches PIL's Resize."""
    size = _pair(out_size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def apply_affine(x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Flip then rotate each sample about its centre, one `grid_sample` for the batch;
    corners rotated in from outside are 0 (black, before normalisation), as torchvision."""
    n, _, height, width = x.shape
    theta = affine_matrices(params, (height, width)).to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, [n, x.shape[1], height, width], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def affine_matrices(params: AugmentParams, size: tuple[int, int]) -> torch.Tensor:
    """N x 2 x 3 sampling matrices in `affine_grid`'s normalised coordinates.

    For output pixel offset p from the centre, the input is read at F M^-1 p: M rotates
    counter-clockwise on screen (y points down), F flips. Pixel offsets are scaled by
    (W/2, H/2) into normalised units, so non-square frames rotate without shearing.
    """
    height, width = size
    rad = params.angle.double() * (math.pi / 180)
    cos, sin = torch.cos(rad), torch.sin(rad)
    fx = 1 - 2 * params.hflip.double()
    fy = 1 - 2 * params.vflip.double()
    half_w, half_h = width / 2, height / 2
    theta = torch.zeros(rad.shape[0], 2, 3, dtype=torch.float64, device=rad.device)
    theta[:, 0, 0] = fx * cos
    theta[:, 0, 1] = -fx * sin * half_h / half_w
    theta[:, 1, 0] = fy * sin * half_w / half_h
    theta[:, 1, 1] = fy * cos
    return theta.float()


def normalize(x: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std per channel, x on the 0..1 scale."""
    mean = torch.tensor(MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise FerError(f"augment: input has shape {tuple(x.shape)}; need N x 3 x H x W (or N x 1)")
    x = x.float() / 255
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _pair(size: Size) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else size
    if height < 1 or width < 1:
        raise FerError(f"out_size: {size!r} must be positive")
    return int(height), int(width)
