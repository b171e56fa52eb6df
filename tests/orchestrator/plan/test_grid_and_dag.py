"""Grids expand into the right DAG; ids are content-addressed; bad grids fail by name."""

from __future__ import annotations

import io
from dataclasses import asdict
from pathlib import Path

import pytest

from fer_core.errors import FerError
from fer_core.models.backbones import BACKBONES
from fer_core.spec import PrepareSpec, UnitSpec
from orchestrator.plan.dag import expand, summary
from orchestrator.plan.grid import load_grid
from orchestrator.plan.labels import label_parts
from orchestrator.plan.overrides import expand_plan, load_grids
from orchestrator.run.launch import launch
from tests.helpers import SMALL_GRID, cli, small_grid


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


def test_fold_rule_interleaved_is_the_default_and_contiguous_makes_new_units(tmp_path):
    """Existing grids keep their ids; the other Oulu reading (D-9) is a different dataset
    split, so every unit differs, even on a synthetic twin whose source holds no folds."""
    ids = {}
    for rule in ("", "interleaved", "contiguous"):
        path = tmp_path / f"{rule or 'default'}.yaml"
        line = f"\n    fold_rule: {rule}" if rule else ""
        path.write_text(SMALL_GRID.replace("detector: center", "detector: center" + line))
        units = expand(load_grid(str(path)), tmp_path)
        ids[rule] = [u.id for u in units]
        prepare = next(u for u in units if u.kind == "prepare")
        assert prepare.spec["fold_rule"] == (rule or "interleaved")
    assert ids[""] == ids["interleaved"]
    assert not set(ids["contiguous"]) & set(ids[""])


@pytest.mark.parametrize(
    ("edit", "culprit"),
    [
        (('strategies: [ce, "ce>focal"]', 'strategies: [ce, "ce>hinge"]'), "hinge"),
        (("tiny: {weights: none", "resnet99: {weights: none"), "resnet99"),
        (("tiny: {weights: none", "timm:resnet99: {weights: none"), "timm:resnet99 is not a timm"),
        (("gamma: 0.0", "gamma: -1"), "-1"),
        (("alpha: 0.25", "alpha: 0"), "alpha"),
        (("alpha: 0.25", "alpha: 1.5"), "1.5"),
        (("batch_size: 32", "batch_sise: 32"), "batch_sise"),
        (("detector: center", "detector: haar"), "haar"),
        (("folds: [1]", "folds: [11]"), "11"),
        (("kind: ckplus", "kind: sfew"), "sfew"),
        (("detector: center", "detector: center\n    fold_rule: blocks"), "fold_rule 'blocks'"),
    ],
)
def test_bad_grids_name_the_culprit(tmp_path, edit, culprit):
    path = tmp_path / "bad.yaml"
    old, new = edit
    assert old in SMALL_GRID
    path.write_text(SMALL_GRID.replace(old, new))
    with pytest.raises(FerError, match=culprit):
        load_grid(str(path))


def test_a_timm_backbone_takes_its_pretrained_input_size_and_checks_its_file(tmp_path, monkeypatch):
    """`timm:<model>`: units take the model's own input size; another is refused at load; a
    missing pretrained file fails the plan naming where it must be."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    text = SMALL_GRID.replace("backbones: [tiny]", "backbones: ['timm:test_convnext']")
    path = tmp_path / "timm.yaml"
    path.write_text(text.replace("tiny: {weights: none, input_size: 32}", "timm:test_convnext: {}"))
    units = expand(load_grid(str(path)), tmp_path / "run")
    trained = [u.spec for u in units if u.kind == "train"]
    assert {(s["backbone"], s["input_size"]) for s in trained} == {("timm:test_convnext", None)}
    path.write_text(text.replace("tiny: {weights: none", "timm:test_convnext: {weights: none"))
    with pytest.raises(FerError, match=r"input_size 32: timm:test_convnext is built for 160 px"):
        load_grid(str(path))
    path.write_text(text.replace("tiny: {weights: none, input_size: 32}",
                                 "timm:test_convnext: {weights: pretrained}"))  # fmt: skip
    expected = tmp_path / "torch_home" / "hub" / "checkpoints" / "timm" / "test_convnext"
    with pytest.raises(FerError, match=f"{expected}.safetensors or {expected}.pth"):
        expand(load_grid(str(path)), tmp_path / "run")


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
        (("holdout_seed: 3", "fold_rule: contiguous"), "fold_rule applies to protocol: kfold"),
        (("holdout_fraction: 0.2", "holdout_fraction: 1"), "holdout_fraction 1 must be"),
        (("holdout_seed: 3", "holdout_seed: x"), "holdout_seed 'x' must be an integer"),
    ],
)
def test_bad_protocol_keys_are_refused_naming_them(tmp_path, edit, message):
    text = FIXED_GRID.format(selection="inner", root=tmp_path).replace(*edit)
    (tmp_path / "g.yaml").write_text(text)
    with pytest.raises(FerError, match=f"datasets.mine: {message}"):
        load_grid(str(tmp_path / "g.yaml"))


@pytest.mark.parametrize(
    ("input_size", "device", "stage_only", "refused"),
    [(299, "auto", False, True), (299, "auto", True, True), (224, "auto", False, False),
     (299, "cpu", False, False)],
)  # fmt: skip
def test_deterministic_is_refused_where_a_gpu_pool_stays_adaptive(
    tmp_path, input_size, device, stage_only, refused
):
    """VGG-16 at 299 px pools its 9 x 9 map to 7 x 7 with uneven windows, which torch cannot
    differentiate deterministically on CUDA: refused at load, not mid-run on a GPU; at 224 px
    (7 x 7, no pooling) or on a CPU it trains."""
    text = small_grid(**({} if stage_only else {"deterministic": "true"}))
    text = text.replace("tiny: {weights: none, input_size: 32}",
                        f"vgg_face: {{weights: none, input_size: {input_size}}}")  # fmt: skip
    text = text.replace("backbones: [tiny]", "backbones: [vgg_face]")
    text += f"device: {device}\n"
    if stage_only:
        text += "stages: {2: {deterministic: true}}\n"
    path = tmp_path / "det.yaml"
    path.write_text(text)
    if refused:
        stage = 2 if stage_only else 1
        wanted = rf"vgg_face: deterministic: true \(stage {stage}\).*9 x 9 .* pooled to 7 x 7"
        with pytest.raises(FerError, match=wanted):
            load_grid(str(path))
    else:
        assert load_grid(str(path)).backbones["vgg_face"].input_size == input_size


def _ids(grid_text: str, tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "grid.yaml"
    path.write_text(grid_text)
    return {u.name: u.id for u in expand(load_grid(str(path)), tmp_path / "run")}


def test_a_weights_files_content_not_its_path_is_part_of_the_ids(tmp_path):
    """A re-imported (changed) weights file retrains what used it; the same bytes at another
    path do not; the prepare unit never depends on it."""
    weights = tmp_path / "imported.pth"
    with_file = SMALL_GRID.replace("tiny: {weights: none", f"tiny: {{weights: {weights}")
    weights.write_bytes(b"first import")
    first = _ids(with_file, tmp_path)
    weights.write_bytes(b"the same file, imported again from a newer .mat")
    again = _ids(with_file, tmp_path)
    moved = tmp_path / "elsewhere.pth"
    moved.write_bytes(b"first import")
    at_another_path = _ids(with_file.replace(str(weights), str(moved)), tmp_path)
    trained = [name for name in first if name != "ckplus/prepare"]
    assert all(first[name] != again[name] for name in trained)
    assert first == at_another_path
    assert first["ckplus/prepare"] == again["ckplus/prepare"]
    assert all(first[name] != _ids(SMALL_GRID, tmp_path)[name] for name in trained)


def test_a_missing_weights_file_fails_the_plan_but_not_a_dry_run(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(SMALL_GRID.replace("tiny: {weights: none", "tiny: {weights: /no/such.pth"))
    with pytest.raises(FerError, match="/no/such.pth"):
        expand(load_grid(str(grid)), tmp_path / "run")
    assert expand(load_grid(str(grid)), tmp_path / "run", problems=[])


def test_the_twin_generators_version_is_part_of_the_synthetic_data_identity(tmp_path, monkeypatch):
    """A new generator version (twins.FORMAT) makes a new twin, so new prepare and training
    ids; version 1 is left out, so the ids issued before it was recorded hold."""
    import orchestrator.plan.dag as dag

    before = _ids(SMALL_GRID, tmp_path)
    monkeypatch.setattr(dag, "TWIN_FORMAT", 2)
    after = _ids(SMALL_GRID, tmp_path)
    assert set(before) == set(after) and all(before[n] != after[n] for n in before)


def test_final_epoch_last_applies_to_each_chains_final_stage_only(tmp_path):
    """`final_epoch: last`: `ce` keeps its last epoch, `ce>focal` its stage 2's last, while
    its stage 1 keeps the best (what stage 2 starts from), so the two no longer share it."""
    grid = tmp_path / "last.yaml"
    grid.write_text(SMALL_GRID + "final_epoch: last\n")
    units = {u.name: u for u in expand_plan(load_grids(str(grid)), tmp_path / "run")}
    config = {n: u.spec["config"] for n, u in units.items() if u.kind == "train"}
    finals = {n: c.get("final_epoch", "best") for n, c in config.items()}  # best: left out
    assert finals == {
        "ckplus/f01/tiny/ce@final_epoch=last": "last",
        "ckplus/f01/tiny/ce@final_epoch=best": "best",
        "ckplus/f01/tiny/ce>focal": "last",  # not named after its parent's value
    }
    stage2 = units["ckplus/f01/tiny/ce>focal"]
    assert stage2.deps == (units["ckplus/f01/tiny/ce@final_epoch=best"].id,)
    assert _ids(SMALL_GRID + "final_epoch: best\n", tmp_path) == _ids(SMALL_GRID, tmp_path)


def test_an_unknown_final_epoch_is_refused_naming_it(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(SMALL_GRID + "final_epoch: worst\n")
    with pytest.raises(FerError, match="final_epoch 'worst'"):
        load_grid(str(path))
    path.write_text(SMALL_GRID.replace("batch_size: 32", "batch_size: 32, final_epoch: last"))
    with pytest.raises(FerError, match="final_epoch"):  # top level only, one way to set it
        load_grid(str(path))


def test_the_paper_grid_feeds_every_network_299_px(tmp_path):
    """D-15: the paper resizes every image to 299 x 299 for all its networks."""
    units, _ = _paper_units(tmp_path)
    sizes = {u.backbone: u.spec["input_size"] for u in units if u.kind == "train"}
    assert set(sizes) == {"inception_v3", "resnet18", "vgg_face"}
    assert all(size in (299, None) for size in sizes.values())
    assert sizes["resnet18"] == sizes["vgg_face"] == BACKBONES["inception_v3"].input_size


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
    # a fixed split has no folds to pick, and its test set may not select (D-18)
    text = text.replace("folds: [1]\n", "selection: inner\n")
    for kind, extra, detector, options in (
        ("affectnet", "", "box", {"classes": "8"}),
        ("rafdb", "", "center", {"images": "aligned"}),
        ("rafdb", "\n    images: original", "mtcnn", {"images": "original"}),
        ("ferplus", "\n    label_mode: probability", "center", {"label_mode": "probability"}),
    ):
        path.write_text(text.replace("kind: ckplus", f"kind: {kind}{extra}"))
        spec = load_grid(str(path)).datasets["ckplus"]
        assert (spec.detector, spec.options, spec.scale) == (detector, options, 1.0), kind


def test_the_wild_grids_are_fold_less_five_strategies_three_datasets_three_seeds(tmp_path):
    for name, backbones in (("wild", ("resnet18", "timm:convnext_tiny")), ("wild-demo", ("tiny",))):
        grid = load_grid(name)
        assert {d.kind for d in grid.datasets.values()} == {"rafdb", "ferplus", "affectnet"}
        assert all(d.fixed for d in grid.datasets.values()) and grid.seeds == (0, 1, 2)
        assert grid.datasets["affectnet7"].options == {"classes": "7"}
        units = expand(grid, tmp_path / name, [])
        counts = summary(units)
        # per dataset and seed: ce, focal, joint, then focal>ce and ce>focal on their stage 1
        k = len(backbones)
        assert counts == {"prepare": 3, "train": 45 * k, "stage 1": 27 * k, "stage 2": 18 * k}
        train = [u for u in units if u.kind == "train"]
        assert {u.fold for u in train} == {0}
        assert {u.backbone for u in train} == set(backbones)
        assert f"rafdb/fixed/{backbones[0]}/ce>focal/s2" in {u.name for u in train}


def test_the_wild_grid_dry_run_on_slurm_lists_its_arrays_and_gpu_hours(tmp_path):
    out = io.StringIO()
    launch("wild", cluster="slurm", run_dir=tmp_path / "run", dry_run=True, out=out)
    text = out.getvalue()
    assert "slurm: 7 sbatch calls (job arrays) for 93 units in 93 tasks" in text, text
    assert "wave 1 A2: --array=0-17%18" in text and "--dependency=aftercorr:A2" in text
    assert "wave 0 A1: --array=0-2%3 --time=60 --job-name" in text  # prepare: no GPU
    assert "(no --gpus-per-node)" in text
    assert "360.0 GPU-hours (90 of 93 jobs with GPUs)" in text and "upper bound" in text
    assert "no measurement on this device (GPU)" in text
    assert not (tmp_path / "run" / "submissions.json").exists()


def test_sync_batchnorm_keeps_ids_when_off_and_is_refused_on_cpu_ranks(tmp_path):
    """`sync_batchnorm` is part of a unit's identity only when on (D-24), and a grid that
    trains on the CPU cannot have it (torch's SyncBatchNorm is GPU-only): refused at load."""
    assert _ids(small_grid(sync_batchnorm="false"), tmp_path) == _ids(small_grid(), tmp_path)
    on = _ids(small_grid(sync_batchnorm="true"), tmp_path)
    assert all(on[n] != _ids(small_grid(), tmp_path)[n] for n in on if "prepare" not in n)
    path = tmp_path / "cpu.yaml"
    path.write_text(small_grid(sync_batchnorm="true") + "device: cpu\n")
    with pytest.raises(FerError, match="sync_batchnorm: true needs GPU ranks"):
        load_grid(str(path))
