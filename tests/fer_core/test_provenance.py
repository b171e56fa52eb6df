"""fer_core.provenance: `-dirty` counts untracked files (not ignored ones), on a real git
checkout; the library versions are the installed ones."""

from __future__ import annotations

import subprocess
from importlib.metadata import version
from pathlib import Path

import numpy
import torch

from fer_core.provenance import git_commit, library_versions


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def test_dirty_counts_untracked_files_but_not_ignored_ones(tmp_path):
    repo = tmp_path.resolve() / "checkout"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "train.py").write_text("print('a')\n")
    (repo / ".gitignore").write_text("runs/\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "one")
    head = _git(repo, "rev-parse", "HEAD")
    (repo / "runs").mkdir()
    (repo / "runs" / "result.parquet").write_text("x")
    git_commit.cache_clear()
    assert git_commit(repo) == head
    (repo / "new_module.py").write_text("print('imported by train.py')\n")
    git_commit.cache_clear()
    assert git_commit(repo) == f"{head}-dirty"
    git_commit.cache_clear()


def test_library_versions_are_the_installed_ones():
    versions = library_versions()
    assert versions["torchvision_version"] == version("torchvision")
    assert versions["facenet_pytorch_version"] == version("facenet-pytorch")
    assert versions["timm_version"] == version("timm")
    assert versions["numpy_version"] == numpy.__version__
    assert versions["cuda_version"] == torch.version.cuda
    cudnn = torch.backends.cudnn.version()
    assert versions["cudnn_version"] == (None if cudnn is None else str(cudnn))
