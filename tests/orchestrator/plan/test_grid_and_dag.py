"""Grids expand into the right DAG; ids are content-addressed; bad grids fail by name."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from fer_core.errors import FerError
from fer_core.spec import PrepareSpec, UnitSpec
from orchestrator.plan.dag import expand, summary
from orchestrator.plan.grid import load_grid
from orchestrator.plan.labels import label_parts
from orchestrator.plan.overrides import expand_plan, load_grids
from tests.helpers import SMALL_GRID, cli


def _paper_units(tmp_path: Path):
    problems: list[str] = []
    return expand(load_grid("paper"), tmp_path, problems), problems


def test_paper_grid_is_180_trainings_and_2_preparations(tmp_path):
    units, problems = _paper_units(tmp_path)
    counts = summary(units)
    assert counts["prepare"] == 2 and counts["train"] == 180
    assert counts["stage 1"] == 100 and counts["stage 2"] == 80
    assert len(problems) == 2  # no data roots given: reported, not fatal, in a dry run


def test_each_unit_spec_is_its_kinds_typed_spec_in_json_form(tmp_path):
    """One spec each: what the worker parses (`from_dict`) is what the plan built."""
    units, _ = _paper_units(tmp_path)
    for unit in units + expand(load_grid("demo"), tmp_path / "demo"):
        typed = PrepareSpec if unit.kind == "prepare" else UnitSpec
        assert asdict(typed.from_dict(unit.spec)) == unit.spec


def test_shared_stage_one_trains_once_and_ids_are_stable(tmp_path):
    units, _ = _paper_units(tmp_path)
    again, _ = _paper_units(tmp_path)
    assert [u.id for u in units] == [u.id for u in again]
    by_id = {u.id: u for u in units}
    ce_first = [u for u in units if u.name == "ckplus/f01/inception_v3/ce"]
    assert len(ce_first) == 1
    children = [u for u in units if ce_first[0].id in u.deps]
    assert [c.strategy for c in children] == ["ce>focal"]
    assert set(ce_first[0].strategies) == {"ce"}
    # topological order: every dependency comes first
    seen: set[str] = set()
    for unit in units:
        assert all(dep in seen for dep in unit.deps), unit.name
        seen.add(unit.id)
    assert len(by_id) == len(units)


def test_a_changed_hyper_parameter_changes_only_the_affected_ids(tmp_path):
    grid_a = tmp_path / "a.yaml"
    grid_b = tmp_path / "b.yaml"
    grid_a.write_text(SMALL_GRID)
    grid_b.write_text(SMALL_GRID.replace("gamma: 0.0", "gamma: 2.0"))
    a = {u.name: u.id for u in expand(load_grid(str(grid_a)), tmp_path)}
    b = {u.name: u.id for u in expand(load_grid(str(grid_b)), tmp_path)}
    assert a["ckplus/f01/tiny/ce"] == b["ckplus/f01/tiny/ce"]
    assert a["ckplus/f01/tiny/ce>focal"] != b["ckplus/f01/tiny/ce>focal"]


def test_seeds_multiply_the_units_and_seed_zero_keeps_its_ids(tmp_path):
    one = tmp_path / "one.yaml"
    one.write_text(SMALL_GRID)
    two = tmp_path / "two.yaml"
    two.write_text(SMALL_GRID.replace("seed: 0", "seeds: [0, 1]"))
    single = [u for u in expand(load_grid(str(one)), tmp_path) if u.kind == "train"]
    double = [u for u in expand(load_grid(str(two)), tmp_path) if u.kind == "train"]
    assert len(double) == 2 * len(single) == 4
    by_name = {u.name: u for u in double}
    assert by_name["ckplus/f01/tiny/ce/s0"].id == single[0].id  # today's id for seed 0
    for seed in (0, 1):  # ce and ce>focal share stage 1 within a seed, never across seeds
        stage1 = by_name[f"ckplus/f01/tiny/ce/s{seed}"]
        child = by_name[f"ckplus/f01/tiny/ce>focal/s{seed}"]
        assert child.deps == (stage1.id,)
        assert stage1.spec["config"]["seed"] == child.spec["config"]["seed"] == seed
    assert by_name["ckplus/f01/tiny/ce/s0"].id != by_name["ckplus/f01/tiny/ce/s1"].id
    from_cli = [
        u for u in expand_plan(load_grids(str(one), seeds=[0, 1]), tmp_path) if u.kind == "train"
    ]
    assert sorted(u.id for u in from_cli) == sorted(u.id for u in double)


@pytest.mark.parametrize(
    ("edit", "culprit"),
    [
        (('strategies: [ce, "ce>focal"]', 'strategies: [ce, "ce>hinge"]'), "hinge"),
        (("tiny: {weights: none", "resnet99: {weights: none"), "resnet99"),
        (("gamma: 0.0", "gamma: -1"), "-1"),
        (("alpha: 0.25", "alpha: 0"), "alpha"),
        (("alpha: 0.25", "alpha: 1.5"), "1.5"),
        (("batch_size: 32", "batch_sise: 32"), "batch_sise"),
        (("detector: center", "detector: haar"), "haar"),
        (("folds: [1]", "folds: [11]"), "11"),
        (("kind: ckplus", "kind: fer2013"), "fer2013"),
    ],
)
def test_bad_grids_name_the_culprit(tmp_path, edit, culprit):
    path = tmp_path / "bad.yaml"
    old, new = edit
    assert old in SMALL_GRID
    path.write_text(SMALL_GRID.replace(old, new))
    with pytest.raises(FerError, match=culprit):
        load_grid(str(path))


def test_unknown_grid_name_lists_the_known_ones():
    with pytest.raises(FerError, match="demo"):
        load_grid("no-such-grid")


def test_yaml_python_tags_are_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(FerError, match="not valid YAML"):
        load_grid(str(path))


def test_missing_data_root_says_how_to_point_at_it(tmp_path):
    with pytest.raises(FerError, match="--data ckplus=DIR"):
        expand(load_grid("paper"), tmp_path)


def test_wrong_layout_is_refused(tmp_path):
    (tmp_path / "not-ck").mkdir()
    grid = load_grid("paper", {"ckplus": str(tmp_path / "not-ck"), "oulu": str(tmp_path)})
    with pytest.raises(FerError, match="not a ckplus tree"):
        expand(grid, tmp_path)


FIXED_GRID = """
name: fixedsplit
seeds: [0, 1]
selection: {selection}
datasets:
  mine:
    kind: manifest
    root: {root}
    protocol: fixed
    holdout_fraction: 0.2
    holdout_seed: 3
    crop_size: 32
    detector: center
    focal: {{alpha: null, gamma: 2.0}}
  ckplus: {{synthetic: true, crop_size: 32, detector: center, focal: {{alpha: 0.25}}}}
backbones:
  tiny: {{input_size: 32}}
experiments:
  - backbones: [tiny]
    strategies: [ce, "ce>focal"]
folds: [1]
"""


def test_a_fixed_split_has_one_unit_per_backbone_stage_and_seed_and_no_folds(tmp_path):
    (tmp_path / "g.yaml").write_text(FIXED_GRID.format(selection="inner", root=tmp_path))
    units = [
        u for u in expand(load_grid(str(tmp_path / "g.yaml")), tmp_path / "run", []) if u.stage
    ]
    fixed = [u for u in units if u.dataset == "mine"]
    assert sorted(u.name for u in fixed) == [
        "mine/fixed/tiny/ce/s0",
        "mine/fixed/tiny/ce/s1",
        "mine/fixed/tiny/ce>focal/s0",
        "mine/fixed/tiny/ce>focal/s1",
    ]
    for unit in fixed:
        spec = UnitSpec.from_dict(unit.spec)
        assert (spec.fold, spec.n_folds, spec.protocol) == (0, 0, "fixed")
        assert (spec.holdout_fraction, spec.holdout_seed) == (0.2, 3)
    assert label_parts(fixed[0].name, "mine", "tiny", "ce", 0, 0) == [
        "mine", "tiny", "ce", "fixed", "seed0"
    ]  # fmt: skip
    # `folds:` picks the k-fold dataset's folds; its units keep the protocol defaults
    kfold = [UnitSpec.from_dict(u.spec) for u in units if u.dataset == "ckplus"]
    assert {(s.fold, s.protocol) for s in kfold} == {(1, "kfold")}


def test_the_hold_out_is_part_of_a_fixed_units_id(tmp_path):
    ids = []
    for seed in (3, 4):
        path = tmp_path / f"g{seed}.yaml"
        text = FIXED_GRID.format(selection="inner", root=tmp_path)
        path.write_text(text.replace("holdout_seed: 3", f"holdout_seed: {seed}"))
        ids.append({u.name: u.id for u in expand(load_grid(str(path)), tmp_path / "run", [])})
    assert ids[0]["mine/fixed/tiny/ce/s0"] != ids[1]["mine/fixed/tiny/ce/s0"]
    assert ids[0]["ckplus/f01/tiny/ce/s0"] == ids[1]["ckplus/f01/tiny/ce/s0"]


def test_heldout_selection_on_a_fixed_split_is_refused_at_load_in_one_line(tmp_path):
    (tmp_path / "g.yaml").write_text(FIXED_GRID.format(selection="heldout", root=tmp_path))
    done = cli("launch", "--grid", tmp_path / "g.yaml", "--dry-run", cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "selection: heldout" in lines[0] and "datasets.mine (protocol: fixed)" in lines[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("protocol: fixed", "protocol: split"), "protocol 'split' is not one of kfold, fixed"),
        (("protocol: fixed", "protocol: kfold"), "holdout_fraction applies to protocol: fixed"),
        (("holdout_seed: 3", "n_folds: 5"), "n_folds applies to protocol: kfold only"),
        (("holdout_fraction: 0.2", "holdout_fraction: 1"), "holdout_fraction 1 must be"),
        (("holdout_seed: 3", "holdout_seed: x"), "holdout_seed 'x' must be an integer"),
    ],
)
def test_bad_protocol_keys_are_refused_naming_them(tmp_path, edit, message):
    text = FIXED_GRID.format(selection="inner", root=tmp_path).replace(*edit)
    (tmp_path / "g.yaml").write_text(text)
    with pytest.raises(FerError, match=f"datasets.mine: {message}"):
        load_grid(str(tmp_path / "g.yaml"))
