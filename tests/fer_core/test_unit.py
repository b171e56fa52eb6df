"""run_unit: the rows it returns, and stage 2 starting from stage 1's best checkpoint; the
UnitSpec it takes."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, replace
from importlib.metadata import version

import numpy as np
import pytest
import torch

from fer_core import metrics
from fer_core.checkpoints import BEST, resume_state
from fer_core.data.faces import FaceSet, prepare_faces
from fer_core.data.index import build_index
from fer_core.errors import FerError
from fer_core.provenance import git_commit
from fer_core.spec import UnitSpec
from fer_core.unit import run_unit
from tests.helpers import CROP


def _spec(twin_faces, unit_id, stage, loss, parent=None, parent_dir=None, **config) -> UnitSpec:
    return UnitSpec.from_dict(
        {
            "unit_id": unit_id,
            "dataset": "ckplus",
            "data_dir": str(twin_faces),
            "fold": 1,
            "backbone": "tiny",
            "input_size": CROP,
            "strategy": "ce" if stage == 1 else "ce>focal",
            "stage": stage,
            "config": {
                "loss": loss,
                "epochs": 2,
                "batch_size": 64,
                "alpha": 0.25 if loss == "focal" else None,
                **config,
            },
            "parent_id": parent,
            "parent_dir": parent_dir,
        }
    )


def test_stage_two_starts_from_the_parents_best_weights(twin_faces, tmp_path):
    stage1 = run_unit(_spec(twin_faces, "s1", 1, "ce"), tmp_path / "s1")
    stage2 = run_unit(
        _spec(twin_faces, "s2", 2, "focal", parent="s1", parent_dir=str(tmp_path / "s1")),
        tmp_path / "s2",
    )
    run1, run2 = stage1["run"], stage2["run"]
    assert run2["parent_weights_sha"] == run2["start_weights_sha"]
    assert run2["start_weights_sha"] != run1["start_weights_sha"]  # stage 1 did learn
    assert run2["parent_id"] == "s1" and run2["strategy"] == "ce>focal"

    n_test = run1["n_test"]
    assert n_test == len(stage1["predictions"]) > 0
    assert run1["n_train"] == len(FaceSet.load(twin_faces).labels) - n_test  # heldout
    assert len(stage1["epochs"]) == 2
    prediction = stage1["predictions"][0]
    assert abs(sum(prediction["probabilities"]) - 1) < 1e-4
    correct = sum(p["label"] == p["predicted"] for p in stage1["predictions"])
    assert run1["test_accuracy"] == correct / n_test
    assert torch.isfinite(torch.tensor(run1["startup_seconds"]))

    card = json.loads((tmp_path / "s2" / "best.json").read_text())  # what inference needs
    assert card["unit_id"] == "s2" and card["strategy"] == "ce>focal" and card["stage"] == 2
    assert card["classes"] == FaceSet.load(twin_faces).classes and card["input_size"] == CROP
    assert card["crop"]["detector"] == "center" and card["crop"]["crop_size"] == CROP
    assert card["normalisation"]["mean"] == [0.485, 0.456, 0.406]
    assert card["numpy_version"] == np.__version__ and card["cuda_version"] == torch.version.cuda


def test_the_runs_row_says_what_ran_and_deterministic_mode_is_honoured(twin_faces, tmp_path):
    spec = _spec(twin_faces, "det", 1, "ce", deterministic=True, precision="auto")
    try:
        run = run_unit(spec, tmp_path / "det")["run"]
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    assert run["deterministic"] is True
    assert run["precision_used"] == "fp32"  # `auto` on a CPU: the dtype, not the setting
    assert run["git_commit"] == git_commit()
    assert run["git_commit"] is None or len(run["git_commit"].removesuffix("-dirty")) == 40
    assert run["numpy_version"] == np.__version__ and run["cuda_version"] == torch.version.cuda
    assert run["torchvision_version"] == version("torchvision")
    assert run["facenet_pytorch_version"] == version("facenet-pytorch")


def test_an_fp32_unit_trains_with_tf32_off(twin_faces, tmp_path):
    """cuDNN's TF32 is on by default; `precision: fp32` turns it off for the stage (and the
    next unit in the process turns it back on unless it asks for fp32 too)."""
    try:
        run_unit(_spec(twin_faces, "f32", 1, "ce", precision="fp32"), tmp_path / "f32")
        assert torch.backends.cudnn.allow_tf32 is False
        run_unit(_spec(twin_faces, "auto", 1, "ce"), tmp_path / "auto")
        assert torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.backends.cudnn.allow_tf32 = True


def test_final_epoch_last_keeps_and_scores_the_last_epoch(twin_faces, tmp_path):
    """Nothing picks the epoch: best.pt is the last epoch's weights, whatever the selection
    subset scored, and the runs row says which epoch it kept."""
    run = run_unit(_spec(twin_faces, "last", 1, "ce", epochs=3, final_epoch="last"),
                   tmp_path / "last")["run"]  # fmt: skip
    kept = torch.load(tmp_path / "last" / BEST, weights_only=True)
    resume, _ = resume_state(tmp_path / "last")
    assert resume is not None
    assert run["best_epoch"] == kept["epoch"] == 3
    assert all(torch.equal(kept["model"][k], v) for k, v in resume["model"].items())
    assert json.loads(run["config"])["final_epoch"] == "last"


def test_a_parent_best_pt_that_is_not_the_recorded_one_is_refused(twin_faces, tmp_path):
    """A swapped but loadable best.pt (another unit's) must not become stage 2's start."""
    run_unit(_spec(twin_faces, "s1", 1, "ce"), tmp_path / "s1")
    run_unit(_spec(twin_faces, "x1", 1, "ce", seed=7), tmp_path / "x1")
    shutil.copy(tmp_path / "x1" / BEST, tmp_path / "s1" / BEST)
    child = _spec(twin_faces, "s2", 2, "focal", parent="s1", parent_dir=str(tmp_path / "s1"))
    with pytest.raises(FerError, match="parent unit s1: .*sha256 does not match.*re-launch"):
        run_unit(child, tmp_path / "s2")
    assert not (tmp_path / "s2" / BEST).exists()


def test_a_spec_with_an_unknown_or_missing_key_is_refused_naming_it(twin_faces):
    body = asdict(_spec(twin_faces, "s1", 1, "ce"))
    assert UnitSpec.from_dict(body) == _spec(twin_faces, "s1", 1, "ce")
    with pytest.raises(FerError, match="unknown key 'colour'"):
        UnitSpec.from_dict({**body, "colour": "red"})
    del body["data_dir"]
    with pytest.raises(FerError, match="missing key 'data_dir'"):
        UnitSpec.from_dict(body)


def test_a_process_start_is_read_to_a_clock_tick():
    """The start-up figure (process start -> first step) counts from when the process
    really started: after the moment its parent started it (to a 10 ms clock tick), not up
    to a second before (the boot time in whole seconds that psutil adds to the start)."""
    code = "from fer_core.unit import process_started_at; print(repr(process_started_at()))"
    before = time.time()
    child = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    after = time.time()
    started = float(child.stdout)
    assert before - 0.02 <= started <= after, (before, started, after)


def test_a_unit_on_the_crop_store_gives_the_rows_of_one_in_memory(twin_faces, tmp_path):
    """The same unit on the same crops, in memory and from the on-disk store (D-21): the
    same run figures and predictions, so the layout is not part of a result."""
    from fer_core.data.faces import prepare_faces
    from fer_core.data.index import DatasetIndex

    stored = tmp_path / "store-faces"
    index = DatasetIndex.read(twin_faces / "index.parquet")
    prepare_faces(index, stored, CROP, detector="center", storage="store", shard_rows=500)
    memory = run_unit(_spec(twin_faces, "m", 1, "ce", sampler="balanced"), tmp_path / "m")
    store = run_unit(_spec(stored, "m", 1, "ce", sampler="balanced"), tmp_path / "s")
    for key in ("best_epoch", "selection_accuracy", "test_accuracy", "n_train", "n_test"):
        assert memory["run"][key] == store["run"][key], key
    assert json.loads(store["run"]["config"])["sampler"] == "balanced"
    assert memory["predictions"] == store["predictions"]


def _fixed_split_faces(twin_root, out, scramble_test: bool):
    """The twin as a manifest with a fixed split (folds 1-7 train, 8-10 test, no val split),
    indexed and cropped as a preparation unit does; `scramble_test` permutes the test labels."""
    index = build_index("ckplus", twin_root)
    test = [r for r in index.records if r.fold > 7]
    names = [r.label_name for r in test]
    scrambled = random.Random(0).sample(names, len(names))
    shuffled = dict(zip((r.path for r in test), scrambled, strict=True))
    rows = ["path,subject,label,split"]
    for r in index.records:
        label = shuffled[r.path] if scramble_test and r.path in shuffled else r.label_name
        rows.append(f"{r.path},{r.subject},{label},{'test' if r.fold > 7 else 'train'}")
    out.mkdir()
    (out / "manifest.csv").write_text("\n".join(rows) + "\n")
    fixed = build_index("manifest", twin_root, out / "manifest.csv", classes=index.classes)
    prepare_faces(fixed, out, CROP, detector="center")
    return out


def _fixed_spec(faces_dir, unit_id) -> UnitSpec:
    spec = _spec(faces_dir, unit_id, 1, "ce", epochs=4, selection="inner", lr=0.05)
    return replace(spec, fold=0, n_folds=0, protocol="fixed", holdout_fraction=0.2)


def test_a_fixed_split_unit_never_looks_at_its_test_labels_before_scoring(twin_root, tmp_path):
    """Scrambled test labels change nothing of training and selection: the same epochs, the
    same best epoch, the same predictions; only the final score differs."""
    plain = _fixed_split_faces(twin_root, tmp_path / "plain", scramble_test=False)
    scrambled = _fixed_split_faces(twin_root, tmp_path / "scrambled", scramble_test=True)
    a = run_unit(_fixed_spec(plain, "a"), tmp_path / "a")
    b = run_unit(_fixed_spec(scrambled, "b"), tmp_path / "b")

    def trajectory(result):
        return [(e["train_loss"], e["selection_accuracy"]) for e in result["epochs"]]

    assert trajectory(a) == trajectory(b)
    assert len({e["selection_accuracy"] for e in a["epochs"]}) > 1  # selection had a choice
    assert a["run"]["best_epoch"] == b["run"]["best_epoch"]
    assert [p["predicted"] for p in a["predictions"]] == [p["predicted"] for p in b["predictions"]]
    assert [p["label"] for p in a["predictions"]] != [p["label"] for p in b["predictions"]]
    faces = FaceSet.load(plain)
    n_test = faces.splits.count("test")
    assert a["run"]["n_test"] == n_test and a["run"]["fold"] == 0
    # the stratified 20 % hold-out of the training split selected, and did not train
    assert a["run"]["n_train"] == pytest.approx(0.8 * (len(faces) - n_test), abs=7)


def test_the_runs_row_carries_the_imbalance_metrics_of_its_predictions(twin_faces, tmp_path):
    result = run_unit(_spec(twin_faces, "m", 1, "ce"), tmp_path / "m")
    run, predictions = result["run"], result["predictions"]
    classes = FaceSet.load(twin_faces).classes
    assert run["classes"] == classes
    counts = metrics.confusion_matrix(
        [p["label"] for p in predictions], [p["predicted"] for p in predictions], len(classes)
    )
    expected = metrics.metrics(counts)
    assert run["test_class_counts"] == counts.sum(axis=1).tolist()
    assert run["mean_class_accuracy"] == pytest.approx(expected.mean_class_accuracy)
    assert run["macro_f1"] == pytest.approx(expected.macro_f1)
    assert run["per_class_recall"] == pytest.approx(expected.per_class_recall, nan_ok=True)


@pytest.mark.slow  # ~16 s on a CPU: the twin's crops scored at 160 px
def test_a_timm_backbone_trains_at_its_pretrained_size(twin_faces, tmp_path):
    """`timm:<model>` through the whole unit: no input_size in the spec means the model's own
    (160 px for timm's test ConvNeXt), and the card says how to normalise for it."""
    spec = UnitSpec.from_dict(
        {**asdict(_spec(twin_faces, "timm", 1, "ce", epochs=1)), "input_size": None,
         "backbone": "timm:test_convnext"}
    )  # fmt: skip
    result = run_unit(spec, tmp_path / "timm")
    assert result["run"]["backbone"] == "timm:test_convnext" and len(result["epochs"]) == 1
    card = json.loads((tmp_path / "timm" / "best.json").read_text())
    assert card["input_size"] == 160 and card["normalisation"]["mean"] == [0.5, 0.5, 0.5]
