"""Data identity end to end: what retrains after the raw data is touched, copied, written
into, or relabelled. A unit's id holds its dataset's content identity, so a launch after a
change that leaves the content alone finds every unit done; a changed label retrains exactly
the units of that dataset."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.plan.dag import expand
from orchestrator.plan.grid import load_grid
from orchestrator.run.launch import launch
from tests.conftest import tiny_ckplus

DATASET = """  {name}:
    kind: ckplus
    root: {root}
    crop_size: 32
    detector: center
    n_folds: 2
    focal: {{alpha: 0.25, gamma: 0.0}}
"""
GRID = """name: identity
seed: 0
folds: [1]
datasets:
{datasets}backbones:
  tiny: {{weights: none, input_size: 32}}
experiments:
  - backbones: [tiny]
    strategies: [ce, "ce>focal"]
train: {{epochs: 1, lr_step_epoch: 1, batch_size: 8}}
"""


def _grid(path: Path, roots: dict[str, Path]) -> Path:
    datasets = "".join(DATASET.format(name=n, root=r) for n, r in roots.items())
    path.write_text(GRID.format(datasets=datasets))
    return path


def _launch(grid: Path, run: Path, **kwargs) -> str:
    out = io.StringIO()
    launch(str(grid), run_dir=run, jobs=2, out=out, **kwargs)
    return out.getvalue()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two datasets (two tiny CK+ trees), launched to completion once."""
    tmp = tmp_path_factory.mktemp("identity")
    roots = {"a": tiny_ckplus(tmp / "a"), "b": tiny_ckplus(tmp / "b", subjects=8)}
    grid = _grid(tmp / "grid.yaml", roots)
    run = tmp / "run"
    _launch(grid, run)
    return tmp, grid, run, roots


def test_touch_faces_in_the_root_and_a_copy_without_times_retrain_nothing(study, capsys):
    tmp, grid, run, roots = study
    for path in roots["a"].rglob("*"):
        os.utime(path)  # touch
    root = str(roots["a"])
    data = ["--dataset", "ckplus", "--root", root, "--n-folds", "2"]
    # a face cache and an index written into the raw root
    assert main(["data", "faces", *data, "--crop-size", "32", "--detector", "center",
                 "--out", f"{root}/faces-32"]) == 0  # fmt: skip
    assert main(["data", "index", *data, "--out", f"{root}/index.parquet"]) == 0
    scratch = tmp / "scratch" / "b"  # node-local scratch: a new path, new times
    shutil.copytree(roots["b"], scratch, copy_function=shutil.copyfile)
    capsys.readouterr()
    output = _launch(grid, run, data_roots={"b": str(scratch)})
    assert "nothing to submit: 6 of 6 units done" in output


def test_one_changed_label_retrains_exactly_that_datasets_units(study, tmp_path):
    tmp, _, run, roots = study
    before = expand(load_grid(str(tmp / "grid.yaml")), run)
    relabelled = tmp_path / "a"
    shutil.copytree(roots["a"], relabelled)
    emotion = relabelled / "Emotion/S002/001/S002_001_00000003_emotion.txt"
    emotion.write_text("   6.0000000e+00\n")
    output = _launch(tmp / "grid.yaml", run, data_roots={"a": str(relabelled)})
    assert "submitting 3 units" in output and "(3 done" in output
    after = expand(load_grid(str(tmp / "grid.yaml"), {"a": str(relabelled)}), run)
    changed = {u.name for u in after} - {u.name for u in before}  # names are stable...
    assert not changed
    old = {u.name: u.id for u in before}
    new_ids = {u.name for u in after if old[u.name] != u.id}  # ...ids move with the data
    assert new_ids == {u.name for u in after if u.dataset == "a"}


def test_data_faces_writes_its_cache_beside_the_root_by_default(tmp_path, capsys):
    root = tiny_ckplus(tmp_path / "ck", subjects=3)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    args = ["data", "faces", "--dataset", "ckplus", "--root", str(root), "--n-folds", "3"]
    assert main([*args, "--crop-size", "32", "--detector", "center"]) == 0
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert (tmp_path / "ck-faces-32" / "faces.pt").is_file()
    assert str(tmp_path / "ck-faces-32") in capsys.readouterr().out
