"""launch resolves every backbone's weights before it creates or submits anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fer_core.data.synthetic.twins import DEFAULT_ROSTER, write_ckplus_twin, write_oulu_twin
from fer_core.models import BACKBONES
from tests.helpers import REPO


def _launch(*args: str, cwd: Path, torch_home: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "launch", "--grid", "paper", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "TORCH_HOME": str(torch_home)},
    )


@pytest.fixture
def imagenet_only(tmp_path) -> Path:
    """A torch cache holding the ImageNet files (placeholders: launch only checks that they
    exist) and no VGG-Face file."""
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    for name in ("inception_v3", "resnet18"):
        (cache / BACKBONES[name].weights_file).write_bytes(b"placeholder")
    return tmp_path / "torch_home"


@pytest.fixture
def data_roots(tmp_path) -> tuple[str, ...]:
    """Small raw trees in the paper datasets' layouts (12 subjects each, 48 px): valid data,
    so that the weights are the only thing missing."""
    roster = DEFAULT_ROSTER.read_text().splitlines()
    subjects = sorted({line.split(",")[0] for line in roster[1:]})[:12]
    small = tmp_path / "roster.csv"
    small.write_text(
        "\n".join([roster[0], *(x for x in roster[1:] if x.split(",")[0] in subjects)])
    )
    data = tmp_path / "data"
    write_ckplus_twin(data / "ckplus", small, image_size=(48, 48), frames_per_sequence=(3, 3))
    write_oulu_twin(data / "oulu", image_size=(48, 48), frames_per_sequence=(3, 3), n_subjects=12)
    return ("--data", f"ckplus={data / 'ckplus'}", "--data", f"oulu={data / 'oulu'}")


def test_paper_grid_without_vgg_face_weights_exits_2_before_anything(
    tmp_path, imagenet_only, data_roots
):
    work = tmp_path / "work"
    work.mkdir()
    result = _launch(
        "--run-dir", str(tmp_path / "run"), "--cluster", "slurm", *data_roots,
        cwd=work, torch_home=imagenet_only,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    expected = imagenet_only / "hub" / "checkpoints" / "vgg_face-vgg16-bgr.pth"
    assert "vgg_face" in lines[0] and str(expected) in lines[0]
    assert "`python -m orchestrator weights import vgg_face FILE`" in lines[0]
    assert not (tmp_path / "run").exists() and list(work.iterdir()) == []  # nothing created


def test_dry_run_lists_the_missing_weights(tmp_path, imagenet_only):
    result = _launch("--dry-run", cwd=tmp_path, torch_home=imagenet_only)
    assert result.returncode == 0, result.stderr
    missing = [line for line in result.stdout.splitlines() if "weights:" in line]
    assert len(missing) == 1 and "vgg_face-vgg16-bgr.pth" in missing[0], result.stdout


def test_with_every_file_in_place_nothing_is_missing(tmp_path, imagenet_only, data_roots):
    cache = imagenet_only / "hub" / "checkpoints"
    (cache / BACKBONES["vgg_face"].weights_file).write_bytes(b"placeholder")
    result = _launch("--dry-run", *data_roots, cwd=tmp_path, torch_home=imagenet_only)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stdout, result.stdout
