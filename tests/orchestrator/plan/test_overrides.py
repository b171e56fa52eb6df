"""`--set` overrides and sweeps: validated as the YAML is, stable ids, unique labels."""

from __future__ import annotations

from dataclasses import replace

import pytest
import yaml

from fer_core.errors import FerError
from orchestrator.plan.dag import expand
from orchestrator.plan.grid import load_grid
from orchestrator.plan.labels import distinct_names, label_parts
from orchestrator.plan.overrides import expand_plan, load_grids, parse_settings, split_values
from orchestrator.run.rundir import RunDir
from tests.helpers import SMALL_GRID


@pytest.fixture
def grid(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(SMALL_GRID)
    return path


def _units(grid, tmp_path, *pairs):
    return expand_plan(load_grids(str(grid), None, parse_settings(list(pairs))), tmp_path)


def _train(units):
    return [u for u in units if u.kind == "train"]


def test_overrides_reach_the_stage_configs(grid, tmp_path):
    units = _units(
        grid, tmp_path, "train.lr=0.05", "stages.2.epochs=3", "datasets.ckplus.focal.gamma=1"
    )
    stage1, stage2 = (next(u for u in _train(units) if u.stage == s) for s in (1, 2))
    assert stage1.spec["config"]["lr"] == 0.05 and stage1.spec["config"]["epochs"] == 2
    assert stage2.spec["config"]["epochs"] == 3 and stage2.spec["config"]["gamma"] == 1
    assert stage2.spec["config"]["lr"] == 0.05


def test_an_override_gives_the_same_ids_as_the_same_value_in_the_file(grid, tmp_path):
    edited = tmp_path / "edited.yaml"
    raw = yaml.safe_load(SMALL_GRID)
    raw["train"]["lr"] = 0.05
    edited.write_text(yaml.safe_dump(raw))
    from_file = {u.id for u in expand(load_grid(str(edited)), tmp_path)}
    assert {u.id for u in _units(grid, tmp_path, "train.lr=0.05")} == from_file


@pytest.mark.parametrize(
    ("pair", "culprit"),
    [
        ("train.lrr=0.1", "--set train.lrr: unknown key 'lrr' under train"),
        ("datasets.fer.crop_size=48", "no datasets entry 'fer'"),
        ("stages.two.epochs=3", "'two' under stages must be a number"),
        ("train.lr=-1", "--set train.lr=-1: lr: -1"),
        ("train.epochs=0.5,2", "--set train.epochs=0.5"),
        ("train.lr=[1", "--set train.lr=[1: not a YAML value"),
        ("seed.x=1", "seed is a value"),
        ("name=a,b", "name cannot be swept"),
        ("train.lr", "expected KEY=VALUE"),
    ],
)
def test_a_bad_setting_is_one_error_naming_the_key(grid, pair, culprit):
    with pytest.raises(FerError) as info:
        load_grids(str(grid), None, parse_settings([pair]))
    assert culprit in str(info.value) and "\n" not in str(info.value)


def test_a_sweep_multiplies_only_the_units_that_depend_on_it(grid, tmp_path):
    plain = _units(grid, tmp_path)
    swept = _units(grid, tmp_path, "datasets.ckplus.focal.gamma=0,1,2")
    # ce (stage 1) does not use gamma: shared by the three points; ce>focal: one per value
    assert len(_train(plain)) == 2 and len(_train(swept)) == 1 + 3
    assert sum(u.kind == "prepare" for u in swept) == 1
    names = [u.name for u in swept]
    assert len(set(names)) == len(names)
    assert "ckplus/f01/tiny/ce" in names
    assert {n for n in names if "ce>focal" in n} == {
        f"ckplus/f01/tiny/ce>focal@gamma={g}" for g in (0, 1, 2)
    }


def test_each_unit_records_the_sweep_points_it_serves(grid, tmp_path):
    """The report's key to a sweep: the shared stage 1 serves every point, each stage 2 its
    own; two swept keys give cartesian labels in the sweep's order; no sweep, no points."""
    assert {u.points for u in _units(grid, tmp_path, "train.lr=0.05")} == {()}
    swept = _units(grid, tmp_path, "datasets.ckplus.focal.gamma=0,2", "stages.2.lr=0.1,0.01")
    labels = tuple(
        f"datasets.ckplus.focal.gamma={g},stages.2.lr={lr}" for g in (0, 2) for lr in (0.1, 0.01)
    )
    points = {u.name: u.points for u in swept}
    assert points["ckplus/prepare"] == points["ckplus/f01/tiny/ce"] == labels
    stage2 = [u for u in swept if u.stage == 2]
    assert sorted(u.points for u in stage2) == sorted((label,) for label in labels)
    gamma2 = next(u for u in stage2 if u.points == (labels[2],))
    assert gamma2.spec["config"]["gamma"] == 2 and gamma2.spec["config"]["lr"] == 0.1


def test_dag_json_keeps_points_only_where_there_are_some(grid, tmp_path):
    """A run without a sweep writes dag.json as before units knew their points, and a
    dag.json without the field (an older run) reads back with none."""
    rundir = RunDir(tmp_path / "run")
    plain = _units(grid, tmp_path)
    rundir.write_dag(plain)
    assert '"points"' not in rundir.dag_path.read_text()
    assert rundir.read_dag() == plain
    swept = _units(grid, tmp_path, "datasets.ckplus.focal.gamma=0,2")
    rundir.write_dag(swept)
    assert rundir.read_dag() == swept
    assert {u.points for u in rundir.read_dag()} >= {("datasets.ckplus.focal.gamma=2",)}


def test_sweep_ids_are_stable_and_each_point_is_a_normal_grid(grid, tmp_path):
    first = _units(grid, tmp_path, "train.lr=0.01,0.05", "train.batch_size=16,32")
    again = _units(grid, tmp_path, "train.lr=0.01,0.05", "train.batch_size=16,32")
    assert [(u.id, u.name) for u in first] == [(u.id, u.name) for u in again]
    assert len(_train(first)) == 2 * 2 * 2  # (ce, ce>focal) x lr x batch size
    single = _units(grid, tmp_path, "train.lr=0.05", "train.batch_size=16")
    assert {u.id for u in single} <= {u.id for u in first}
    stage2 = next(u for u in first if u.id == next(s.id for s in single if s.stage == 2))
    assert stage2.name == "ckplus/f01/tiny/ce>focal@batch_size=16,lr=0.05"


def test_the_effective_grid_reproduces_the_units(grid, tmp_path):
    plan = load_grids(str(grid), None, parse_settings(["train.lr=0.01,0.05", "stages.2.epochs=3"]))
    assert plan.effective["sweep"] == {"train.lr": [0.01, 0.05]}
    copy = tmp_path / "grid.yaml"
    copy.write_text(yaml.safe_dump(plan.effective))
    again = expand_plan(load_grids(str(copy)), tmp_path)
    assert [u.id for u in again] == [u.id for u in expand_plan(plan, tmp_path)]


def test_a_set_replaces_a_sweep_of_the_file(grid, tmp_path):
    raw = yaml.safe_load(SMALL_GRID)
    raw["sweep"] = {"train.lr": [0.01, 0.05]}
    swept = tmp_path / "swept.yaml"
    swept.write_text(yaml.safe_dump(raw))
    assert len(load_grids(str(swept)).grids) == 2
    assert len(load_grids(str(swept), None, parse_settings(["train.lr=0.1"])).grids) == 1
    with pytest.raises(FerError, match="sweep: is expanded by launch"):
        load_grid(str(swept))


def test_commas_inside_brackets_and_quotes_do_not_split():
    assert split_values("[0.1,0.2],0.3") == ["[0.1,0.2]", "0.3"]
    assert split_values("'a,b'") == ["'a,b'"]
    (setting,) = parse_settings(["datasets.ckplus.focal.alpha=[0.1, 0.2]"])
    assert setting.values == ([0.1, 0.2],) and not setting.sweep


def test_labels_tell_apart_units_that_share_a_name(grid, tmp_path):
    """The tune case: the heldout and the inner stage 1 of one fold."""
    heldout = expand(load_grid(str(grid)), tmp_path)
    inner = expand(replace(load_grid(str(grid)), selection="inner"), tmp_path)
    units = distinct_names(heldout + [u for u in inner if u.kind == "train"])
    names = [u.name for u in units]
    assert len(set(names)) == len(names)
    assert "ckplus/f01/tiny/ce@selection=inner" in names
    # stage 2 inherits its parent's distinguishing values; renaming twice changes nothing
    assert "ckplus/f01/tiny/ce>focal@selection=heldout" in names
    assert [u.name for u in distinct_names(units)] == names


def test_by_label_links_point_at_the_unit_folders(grid, tmp_path):
    rundir = RunDir(tmp_path / "run")
    units = _units(grid, rundir.path, "train.lr=0.01,0.05")
    rundir.write_dag(units)
    for unit in units:
        link = rundir.label_path(unit)
        assert link.is_symlink() and not link.readlink().is_absolute()
        assert link.resolve() == rundir.unit_dir(unit.id).resolve()
        assert ">" not in str(link.relative_to(rundir.path))
    stage2 = next(u for u in units if u.stage == 2 and "lr=0.05" in u.name)
    assert rundir.label_path(stage2).relative_to(rundir.path).parts == (
        "by-label", "ckplus", "tiny", "ce-focal", "f01", "seed0", "lr=0.05"
    )  # fmt: skip
    # a relaunch with one point: the other point's links go
    rundir.write_dag(_units(grid, rundir.path, "train.lr=0.05"))
    links = [p for p in (rundir.path / "by-label").rglob("*") if p.is_symlink()]
    assert len(links) == 3 and all(p.resolve().is_dir() for p in links)


def test_label_parts_are_shell_safe():
    parts = label_parts("ckplus/f01/tiny/ce>focal@alpha=[0.1,0.2]", "ckplus", "tiny", "ce>focal", 1)
    assert parts == ["ckplus", "tiny", "ce-focal", "f01", "seed0", "alpha=_0.1,0.2"]


def test_tune_takes_single_overrides_checked_as_its_yaml_is():
    from orchestrator.tune.space import load_tune

    spec = load_tune("tune", None, None, ("train.epochs=3", "search.samples=2"))
    assert spec.grid.train["epochs"] == 3 and spec.samples == 2
    for pair, culprit in (
        ("train.epochz=3", "--set train.epochz: unknown key 'epochz'"),
        ("train.lr=0.1,0.2", "sweeps are for launch"),
        ("search.sampls=2", "search: unknown key 'sampls'"),
    ):
        with pytest.raises(FerError, match=culprit):
            load_tune("tune", None, None, (pair,))
