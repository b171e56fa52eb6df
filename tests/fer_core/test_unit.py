"""run_unit: the rows it returns, and stage 2 starting from stage 1's best checkpoint."""

from __future__ import annotations

import json

import torch

from fer_core.data.faces import FaceSet
from fer_core.unit import run_unit
from tests.conftest import CROP


def _spec(twin_faces, unit_id, stage, loss, parent=None, parent_dir=None):
    return {
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
        },
        "parent_id": parent,
        "parent_dir": parent_dir,
    }


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
