"""Data identity end to end: what retrains after the raw data is touched, copied, written
into, or relabelled. A unit's id holds its dataset's content identity, so a launch after a
change that leaves the content alone finds every unit done; a changed label retrains exactly
the units of that dataset, also when the label is in a manifest kept outside the root."""

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
from tests.helpers import tiny_ckplus

DATASET = """  {name}:
    kind: {kind}
    root: {root}{manifest}
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


def _grid(path: Path, ckplus: Path, root: Path, manifest: Path) -> Path:
    """Dataset `a`: a CK+ tree; dataset `b`: a tree and a manifest kept outside it."""
    datasets = DATASET.format(name="a", kind="ckplus", root=ckplus, manifest="") + DATASET.format(
        name="b", kind="manifest", root=root, manifest=f"\n    manifest: {manifest}"
    )
    path.write_text(GRID.format(datasets=datasets))
    return path


def _manifest(root: Path, path: Path) -> Path:
    images = sorted(root.rglob("*.png"))
    labels = ("happy", "sad", "surprise")
    rows = [
        f"{p.relative_to(root)},{p.parent.parent.name},{labels[i % 3]}"
        for i, p in enumerate(images)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("path,subject,label\n" + "\n".join(rows) + "\n")
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
    manifest = _manifest(roots["b"], tmp / "labels" / "b.csv")
    grid = _grid(tmp / "grid.yaml", roots["a"], roots["b"], manifest)
    _launch(grid, tmp / "run")
    return tmp


def _private(study: Path, tmp_path: Path) -> tuple[Path, Path, Path, dict[str, Path], Path]:
    """A copy of the launched study (trees, manifest, run dir) at new paths that one test may
    change: the module's study stays as launched. Identity is content, not paths, so the
    copy is as done as the original."""
    tmp = Path(shutil.copytree(study, tmp_path / "identity", symlinks=True))
    roots = {"a": tmp / "a", "b": tmp / "b"}
    manifest = tmp / "labels" / "b.csv"
    grid = _grid(tmp / "grid.yaml", roots["a"], roots["b"], manifest)
    return tmp, grid, tmp / "run", roots, manifest


def test_touch_faces_in_the_root_and_a_copy_without_times_retrain_nothing(study, tmp_path, capsys):
    tmp, grid, run, roots, _ = _private(study, tmp_path)
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
    """The label is edited in place in a manifest outside the root: same paths, same times
    of every image; only the content of what the units use changed."""
    tmp, grid, run, _, manifest = _private(study, tmp_path)
    before = {u.name: u.id for u in expand(load_grid(str(grid)), run)}
    text = manifest.read_text()
    manifest.write_text(text.replace(",happy\n", ",sad\n", 1))
    output = _launch(grid, run)
    assert "submitting 3 units" in output and "(3 done" in output
    after = {u.name: u for u in expand(load_grid(str(grid)), run)}
    assert set(after) == set(before)  # names are stable, ids move with the data
    assert {n for n, u in after.items() if u.id != before[n]} == {
        n for n, u in after.items() if u.dataset == "b"
    }


def test_data_faces_writes_its_cache_beside_the_root_by_default(tmp_path, capsys):
    root = tiny_ckplus(tmp_path / "ck", subjects=3)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    args = ["data", "faces", "--dataset", "ckplus", "--root", str(root), "--n-folds", "3"]
    assert main([*args, "--crop-size", "32", "--detector", "center"]) == 0
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert (tmp_path / "ck-faces-32" / "faces.pt").is_file()
    assert str(tmp_path / "ck-faces-32") in capsys.readouterr().out
