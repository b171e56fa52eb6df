"""Which code produced a number: the git commit of the checkout this package runs from, and
the versions of the libraries and GPU stack that ran it."""

from __future__ import annotations

import functools
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from fer_core.records import LibraryVersions

CHECKOUT = Path(__file__).resolve().parents[1]


@functools.cache
def git_commit(checkout: Path = CHECKOUT) -> str | None:
    """The checkout's HEAD commit, with `-dirty` appended when files differ from it, tracked
    or untracked but not ignored (a new module the code imports is uncommitted code too);
    None outside a git checkout or without git. Asked once per process, with argument
    lists (no shell)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        lines = head.stdout.splitlines()
        # An installed copy inside some other repository (a venv in a project) is not ours.
        if head.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != checkout:
            return None
        changes = subprocess.run(
            ["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=normal"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = lines[1]
    return f"{commit}-dirty" if changes.returncode == 0 and changes.stdout.strip() else commit


def library_versions() -> LibraryVersions:
    """The versions, besides torch and Python, that a number depends on: torchvision,
    facenet-pytorch and timm (the backbones' code), numpy, and the CUDA and cuDNN that torch was
    built with (None where torch has none, or a library is not installed). Read from the
    installed packages' metadata: the libraries themselves are not imported for this."""
    import numpy
    import torch

    cudnn = torch.backends.cudnn.version()  # type: ignore[no-untyped-call]  # None: no cuDNN
    return {
        "torchvision_version": _installed("torchvision"),
        "facenet_pytorch_version": _installed("facenet-pytorch"),
        "timm_version": _installed("timm"),
        "numpy_version": numpy.__version__,
        "cuda_version": torch.version.cuda,
        "cudnn_version": None if cudnn is None else str(cudnn),
    }


def _installed(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None
