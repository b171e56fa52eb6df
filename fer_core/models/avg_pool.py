"""Average pooling to a fixed size, deterministic where it can be (see
`fer_core.models.pool_windows`): a plain average pool when the windows are uniform (the same
numbers as the adaptive pool), the adaptive pool otherwise. No parameters, so swapping it for
`AdaptiveAvgPool2d` leaves every state dict as it was."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fer_core.models.pool_windows import uniform_windows


def avg_pool_to(x: torch.Tensor, out: int) -> torch.Tensor:
    """`F.adaptive_avg_pool2d(x, out)`, as a plain average pool where that is exact."""
    # int(): under tracing (export) a shape is a tensor; the exported model's size is fixed
    rows = uniform_windows(int(x.shape[-2]), out)
    cols = uniform_windows(int(x.shape[-1]), out)
    if rows is None or cols is None:
        return F.adaptive_avg_pool2d(x, out)
    return F.avg_pool2d(x, (rows[0], cols[0]), (rows[1], cols[1]))


class AvgPoolTo(nn.Module):
    """`nn.AdaptiveAvgPool2d(out)` by `avg_pool_to`."""

    def __init__(self, out: int):
        super().__init__()
        self.out = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool_to(x, self.out)
