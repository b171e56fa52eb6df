"""CLI contract for bad input: one line on stderr naming the culprit, exit 2, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import main
from tests.helpers import REPO, SMALL_GRID


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


def test_a_bad_set_is_one_line_naming_the_key_and_writes_nothing(tmp_path, grid):
    run = tmp_path / "run"
    for pair, culprit in (
        ("train.lrr=0.1", "train.lrr"),
        ("stages.2.epochs=0", "--set stages.2.epochs=0"),
        ("datasets.ckplus.focal.gamma=-1,1", "gamma=-1"),
    ):
        result = _cli(
            "launch", "--grid", str(grid), "--run-dir", str(run), "--set", pair, cwd=tmp_path
        )
        _assert_one_line_error(result, culprit)
    assert not run.exists()


def test_a_sweep_dry_run_counts_its_points_and_units(tmp_path, grid):
    result = _cli(
        "launch", "--grid", str(grid), "--dry-run", "--set", "train.lr=0.01,0.05",
        "--set", "stages.2.epochs=1", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "2 sweep points (train.lr x2)" in result.stdout
    assert "1 preparation job + 4 trainings (stage 1: 2, stage 2: 2)" in result.stdout


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["launch"],
            ["(default: demo)", "(default: local)", "KEY=a,b,c sweeps", "(default: auto)"],
        ),
        (["status"], ["--watch", "(default: 2.0)"]),
        (["query"], ["runs_all", "PIVOT", "--tables", "CSV with a header", "prepare"]),
        (["tune"], ["(default: tune)", "(default: ray)", "search.samples"]),
        (["data", "faces"], ["(default: 299)", "default: the kind's", "(default: 10)", "centre"]),
        (["data", "index"], ["(default: 10)", "Parquet"]),
        (["data", "synth"], ["(default: 0)", "twin"]),
        (["cluster"], ["install", "apt-install", "stop slurmd", "sinfo"]),
    ],
)
def test_help_explains_every_command_with_defaults(tmp_path, argv, expected):
    result = _cli(*argv, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for phrase in expected:
        assert phrase in text, phrase


def test_data_synth_and_index_a_fixed_split_twin(tmp_path, capsys):
    """`data synth --dataset affectnet --scale S` writes the twin; `data index` reads it as
    distributed and prints the split sizes and the rows it dropped, with their reasons."""
    twin = tmp_path / "affectnet"
    assert (
        main(["data", "synth", "--dataset", "affectnet", "--scale", "0.002", "--out", str(twin)])
        == 0
    )
    out = tmp_path / "index.parquet"
    argv = ["data", "index", "--dataset", "affectnet", "--classes", "7", "--root", str(twin)]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    # 0.002 x the published counts per split and class (at least 1), contempt dropped
    assert "576 images (569 train, 7 test), 7 classes" in printed[-2]
    assert printed[-1] == (
        "dropped rows (not an expression, or not a class of this variant): contempt (not in "
        "AffectNet-7) 9, non-face 166, none 67, uncertain 24"
    )
