"""Grids expand into the right DAG; ids are content-addressed; bad grids fail by name."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from fer_core.errors import FerError
from fer_core.spec import PrepareSpec, UnitSpec
from orchestrator.plan.dag import expand, summary
from orchestrator.plan.grid import load_grid
from orchestrator.plan.overrides import expand_plan, load_grids
from tests.helpers import SMALL_GRID


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
        (("kind: ckplus", "kind: sfew"), "sfew"),
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


@pytest.mark.parametrize(
    ("edit", "culprit"),
    [
        (("kind: ckplus", "kind: rafdb\n    images: cropped"), "images 'cropped' is not one of"),
        (("kind: ckplus", "kind: ckplus\n    classes: 7"), "'classes' is not an option of"),
        (("kind: ckplus", "kind: affectnet\n    classes: 6"), "classes 6 is not one of 8, 7"),
        (("kind: ckplus", "kind: affectnet"), "detector 'center' is not one of box"),
        (("detector: center", "detector: box"), "detector 'box' is not one of mtcnn, center"),
        (("kind: ckplus", "kind: fer2013\n    scale: 0"), r"scale 0 must be a number in \(0, 1\]"),
        (("kind: ckplus", "kind: ckplus\n    scale: 0.5"), "scale is a synthetic"),
    ],
)
def test_bad_dataset_options_name_the_culprit(tmp_path, edit, culprit):
    path = tmp_path / "bad.yaml"
    old, new = edit
    path.write_text(SMALL_GRID.replace(old, new))
    with pytest.raises(FerError, match=culprit):
        load_grid(str(path))


def test_a_fixed_split_kind_gets_its_own_detector_and_options(tmp_path):
    path = tmp_path / "wild.yaml"
    text = SMALL_GRID.replace("    detector: center\n", "").replace("image_size: [96, 72]", "")
    for kind, extra, detector, options in (
        ("affectnet", "", "box", {"classes": "8"}),
        ("rafdb", "", "center", {"images": "aligned"}),
        ("rafdb", "\n    images: original", "mtcnn", {"images": "original"}),
        ("ferplus", "\n    label_mode: probability", "center", {"label_mode": "probability"}),
    ):
        path.write_text(text.replace("kind: ckplus", f"kind: {kind}{extra}"))
        spec = load_grid(str(path)).datasets["ckplus"]
        assert (spec.detector, spec.options, spec.scale) == (detector, options, 1.0), kind
