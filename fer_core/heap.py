"""Keep a long training loop's heap from growing: a fixed glibc mmap threshold.

Why: glibc serves an allocation above its mmap threshold (128 KiB at start) with its own
`mmap`, returned to the system on free. But each such free *raises* the threshold (up to
32 MiB), so after the first few batches the tensors of every step (a 1024 x 3 x 48 x 48 float
batch is 28 MiB) come from the heap, which fragments and grows with the number of steps: a
unit's peak RSS grew by ~0.6 GiB over 200 steps of batch 1024 (measured; with the threshold
fixed it stayed flat). Setting the threshold explicitly turns that adjustment off. A no-op
where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD = 1 << 20  # allocations from 1 MiB up get their own mapping, freed at once


def fix_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold for this process (and processes it forks later);
    returns whether it was set."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
