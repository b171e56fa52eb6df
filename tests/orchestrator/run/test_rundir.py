"""A run dir copied by a tool that follows links (`cp -rL`, scp, zip) has real folders where
its `by-label/` links were: the next launch puts the links back when those folders are plain
copies of their units' folders, and refuses, naming the folder, when one holds anything else."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest

from fer_core.errors import FerError
from orchestrator.run.launch import launch
from orchestrator.run.rundir import RunDir
from tests.helpers import small_grid, tiny_ckplus


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> tuple[Path, RunDir]:
    tmp = tmp_path_factory.mktemp("copied")
    grid = tmp / "grid.yaml"
    root = tiny_ckplus(tmp / "ck")
    grid.write_text(
        small_grid("copied", root=root, strategies="[ce]", epochs=1, n_folds=2, batch_size=8)
    )
    launch(str(grid), run_dir=tmp / "run", jobs=1, out=io.StringIO())
    return grid, RunDir(tmp / "run")


def _copy_following_links(rundir: RunDir, folder: Path) -> RunDir:
    copy = folder / "run"
    subprocess.run(["cp", "-rL", str(rundir.path), str(copy)], check=True)
    return RunDir(copy)


def _aliases(rundir: RunDir) -> dict[Path, Path]:
    return {rundir.label_path(unit): rundir.unit_dir(unit.id) for unit in rundir.read_dag()}


def test_a_copy_whose_links_became_folders_launches_and_gets_its_links_back(launched, tmp_path):
    grid, shared = launched
    copy = _copy_following_links(shared, tmp_path)
    aliases = _aliases(copy)
    assert all(a.is_dir() and not a.is_symlink() for a in aliases)  # what cp -rL made
    finished = {r["unit_id"]: r["finished_at"] for r in copy.store.read("runs").to_pylist()}
    launch(str(grid), run_dir=copy.path, jobs=1, out=io.StringIO())
    assert all(a.is_symlink() and a.resolve() == unit for a, unit in aliases.items())
    again = {r["unit_id"]: r["finished_at"] for r in copy.store.read("runs").to_pylist()}
    assert again == finished  # nothing retrained: the copy's results stand


def test_a_copied_alias_folder_holding_more_than_its_unit_is_refused_and_kept(launched, tmp_path):
    grid, shared = launched
    copy = _copy_following_links(shared, tmp_path)
    alias = next(a for a in _aliases(copy) if (a / "spec.json").is_file())
    (alias / "notes.txt").write_text("mine")
    dag = copy.dag_path.read_text()
    with pytest.raises(FerError, match="holding notes.txt that the unit's folder does not") as e:
        launch(str(grid), run_dir=copy.path, jobs=1, out=io.StringIO())
    assert str(alias) in str(e.value) and "\n" not in str(e.value)
    assert (alias / "notes.txt").read_text() == "mine" and not alias.is_symlink()
    assert copy.dag_path.read_text() == dag  # refused before anything was written
