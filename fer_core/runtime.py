"""Process-level settings for a training process: its CPU thread budget, and what to load early.

torch reads OMP_NUM_THREADS once, when it loads. A process that had torch loaded before its
budget was known (a forked worker, a reused Ray actor) must set the budget explicitly, or it
runs with as many threads as the machine has cores and oversubscribes the CPUs it shares.
"""

from __future__ import annotations

import os

# What a training process imports before its first step. torch._dynamo is not loaded by
# `import torch` but by the first optimizer built (torch.optim wraps `step` with dynamo's
# disable), and costs about as much as torch itself; a worker pool loads it once for all.
PRELOAD = ("torch", "torch._dynamo", "fer_core.unit")


def use_threads(threads: int) -> None:
    """Run torch's CPU kernels on `threads` threads in this process and its children."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    import torch

    torch.set_num_threads(threads)


def use_determinism(deterministic: bool) -> None:
    """`deterministic: true`: deterministic kernels only (an op without one fails, naming
    itself, rather than varying silently), cuDNN's deterministic algorithms and no autotuning.
    Set both ways, so a process that runs several units (a Ray actor) carries nothing over."""
    import torch

    if deterministic:
        # cuBLAS needs a fixed workspace for reproducible matmuls (read at its first use).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = False


def use_precision(precision: str) -> None:
    """`precision: fp32` means IEEE fp32: cuDNN convolutions and cuBLAS matmuls without TF32
    (torch lets cuDNN use TF32 by default on Ampere and later GPUs, ~10 mantissa bits).
    Any other precision restores torch's defaults (cuDNN TF32 on, matmul TF32 off). Set
    both ways, so a process that runs several units carries nothing over."""
    import torch

    ieee = precision == "fp32"
    torch.backends.cudnn.allow_tf32 = not ieee
    torch.backends.cuda.matmul.allow_tf32 = False
