"""CLI contract for bad input: one line on stderr naming the culprit, exit 2, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SMALL_GRID


def _cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


@pytest.fixture
def grid(tmp_path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL_GRID)
    return path


def _assert_one_line_error(result, culprit: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert culprit in lines[0]


def test_unknown_grid(tmp_path):
    _assert_one_line_error(_cli("launch", "--grid", "nope", cwd=tmp_path), "nope")


def test_bad_data_argument(tmp_path, grid):
    result = _cli("launch", "--grid", str(grid), "--data", "fer2013=/x", cwd=tmp_path)
    _assert_one_line_error(result, "fer2013")


def test_cluster_profile_typo(tmp_path, grid):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("local: {backend: local, jbos: 2}\n")
    result = _cli("launch", "--grid", str(grid), "--cluster-file", str(cluster), cwd=tmp_path)
    _assert_one_line_error(result, "jbos")
    assert not (tmp_path / "runs").exists()


def test_slurm_without_sbatch_submits_nothing(tmp_path, grid):
    bare = tmp_path / "bin"
    bare.mkdir()
    result = _cli(
        "launch",
        "--grid",
        str(grid),
        "--cluster",
        "slurm-local",
        "--run-dir",
        str(tmp_path / "run"),
        cwd=tmp_path,
        env={"PATH": str(bare)},
    )
    _assert_one_line_error(result, "sbatch")
    assert not (tmp_path / "run").exists()


def test_status_of_a_missing_run_dir(tmp_path):
    result = _cli("status", "--run-dir", str(tmp_path / "nothing"), cwd=tmp_path)
    _assert_one_line_error(result, "nothing")


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    result = _cli(
        "launch", "--grid", "paper", "--dry-run", "--run-dir", str(tmp_path / "r"), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "2 preparation jobs + 180 trainings" in result.stdout
    assert not (tmp_path / "r").exists()
