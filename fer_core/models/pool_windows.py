"""Which adaptive average pools `deterministic: true` can train on CUDA; no torch, so a grid
is checked when it loads (`orchestrator.plan.grid`).

`AdaptiveAvgPool2d` to a size > 1 has no deterministic CUDA backward: torch raises under
`torch.use_deterministic_algorithms`. Where every pooling window along an axis has the same
size and the windows start a fixed step apart, the adaptive pool is exactly a plain average
pool with that kernel and stride, whose backward is deterministic, and the backbones pool so
(`fer_core.models.avg_pool.AvgPoolTo`). Uneven windows (VGG-16's 9 x 9 map at 299 px pooled
to 7 x 7) remain adaptive, and a grid asking for determinism there is refused. A pool to
1 x 1 is a mean in torch either way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fer_core.models.backbones import BackboneSpec


def uniform_windows(size: int, out: int) -> tuple[int, int] | None:
    """(kernel, stride) when adaptive average pooling of `size` cells to `out` is a plain
    average pool, else None. The windows are torch's: [⌊i·size/out⌋, ⌈(i+1)·size/out⌉);
    a map smaller than `out` repeats cells, which no plain pool does."""
    if size < out:
        return None
    starts = [i * size // out for i in range(out)]
    ends = [-(-(i + 1) * size // out) for i in range(out)]
    kernels = {end - start for start, end in zip(starts, ends, strict=True)}
    strides = {b - a for a, b in zip(starts, starts[1:], strict=False)}
    if len(kernels) != 1 or len(strides) > 1:
        return None
    kernel = kernels.pop()
    return kernel, strides.pop() if strides else kernel


def deterministic_problem(spec: BackboneSpec, input_size: int) -> str | None:
    """Why backbone `spec` at `input_size` px cannot train with `deterministic: true` on
    CUDA (a pool of its training pass stays adaptive), or None."""
    for size, out in spec.adaptive_pools(input_size):
        if uniform_windows(size, out) is None:
            return (
                f"at input_size {input_size} its {size} x {size} feature map is pooled to "
                f"{out} x {out} with uneven windows, which have no deterministic CUDA backward"
            )
    return None
