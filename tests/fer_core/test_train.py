"""train_stage on the synthetic twin: it learns, resumes exactly, and refuses NaN."""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytest
import torch

from fer_core import train as train_module
from fer_core.checkpoints import BEST, DIGESTS, LAST, load_best
from fer_core.config import StageConfig
from fer_core.data.faces import FaceSet
from fer_core.data.protocol import kfold_roles
from fer_core.errors import FerError
from fer_core.models import build_model
from fer_core.train import score, train_stage
from fer_core.unit import stage_data
from tests.helpers import CROP

CPU = torch.device("cpu")


class Interrupted(Exception):
    pass


def _model(classes: int, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("tiny", classes)
    model.reset_head(torch.Generator().manual_seed(seed))
    return model


@pytest.fixture(scope="module")
def faces(twin_faces) -> FaceSet:
    return FaceSet.load(twin_faces)


@pytest.mark.slow
def test_tiny_cnn_learns_the_twin_well_above_chance(faces, tmp_path):
    config = StageConfig(epochs=12, lr=0.05, lr_step_epoch=10, batch_size=32)
    data = stage_data(faces, kfold_roles(faces.folds, 1, 10, "inner"))
    model = _model(len(faces.classes))
    outcome = train_stage(model, data, config, tmp_path, input_size=CROP, device=CPU)
    load_best(model, tmp_path)
    test = faces.folds == 1
    result = score(model, faces.images[test], faces.labels[test], CROP, CPU)
    majority = torch.bincount(faces.labels[test]).max().item() / int(test.sum())
    assert outcome.best_epoch >= 1
    assert result.accuracy > majority + 0.15, (result.accuracy, majority)


def test_resume_after_a_kill_equals_a_straight_run(faces, tmp_path):
    config = StageConfig(epochs=4, lr_step_epoch=3, batch_size=64)
    data = stage_data(faces, kfold_roles(faces.folds, 2, 10, "heldout"))

    straight = _model(len(faces.classes))
    train_stage(straight, data, config, tmp_path / "straight", CROP, CPU)

    def kill_after_two(record):
        if record["epoch"] == 2:
            raise Interrupted

    interrupted = _model(len(faces.classes))
    with pytest.raises(Interrupted):
        train_stage(
            interrupted, data, config, tmp_path / "resumed", CROP, CPU, on_epoch=kill_after_two
        )
    resumed = _model(len(faces.classes), seed=123)  # a fresh process: other start weights
    outcome = train_stage(resumed, data, config, tmp_path / "resumed", CROP, CPU)

    assert outcome.resumed_from_epoch == 2
    assert [e["epoch"] for e in outcome.epochs] == [1, 2, 3, 4]
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=1e-5, atol=1e-6)


def test_checkpoints_carry_digests_and_a_corrupt_resume_state_restarts(faces, tmp_path):
    config = StageConfig(epochs=1, batch_size=64)
    data = stage_data(faces, kfold_roles(faces.folds, 3, 10, "heldout"))
    train_stage(_model(len(faces.classes)), data, config, tmp_path, CROP, CPU)
    digests = json.loads((tmp_path / DIGESTS).read_text())
    assert set(digests) == {LAST, BEST}

    (tmp_path / LAST).write_bytes(b"truncated")
    outcome = train_stage(_model(len(faces.classes)), data, config, tmp_path, CROP, CPU)
    assert outcome.resumed_from_epoch == 0  # not trusted: trained from the start again


def test_a_corrupt_best_checkpoint_is_detected(faces, tmp_path):
    config = StageConfig(epochs=1, batch_size=64)
    data = stage_data(faces, kfold_roles(faces.folds, 3, 10, "heldout"))
    model = _model(len(faces.classes))
    train_stage(model, data, config, tmp_path, CROP, CPU)
    raw = bytearray((tmp_path / BEST).read_bytes())
    raw[-10] ^= 0xFF
    (tmp_path / BEST).write_bytes(bytes(raw))
    with pytest.raises(FerError, match="corrupt"):
        load_best(model, tmp_path)


def test_a_diverging_loss_stops_with_the_epoch_named(faces, tmp_path):
    config = StageConfig(epochs=3, lr=1e12, momentum=0.0, batch_size=64)
    data = stage_data(faces, kfold_roles(faces.folds, 1, 10, "heldout"))
    with pytest.raises(FerError, match=r"epoch \d+: training loss is (nan|inf)"):
        train_stage(_model(len(faces.classes)), data, config, tmp_path, CROP, CPU)


def test_inner_selection_never_uses_the_test_fold(faces):
    data = stage_data(faces, kfold_roles(faces.folds, 4, 10, "inner"))
    test_count = int((faces.folds == 4).sum())
    inner_count = int((faces.folds == 5).sum())
    assert len(data.select_labels) == inner_count
    assert len(data.train_labels) == len(faces.labels) - test_count - inner_count


def _rng_fingerprint(device: torch.device) -> str:
    """A digest of every global RNG state (Python, numpy, torch CPU, CUDA on a GPU run)."""
    parts = [repr(random.getstate()), repr(np.random.get_state(legacy=True)[2])]
    parts.append(np.random.get_state(legacy=True)[1].tobytes().hex())
    parts.append(torch.get_rng_state().numpy().tobytes().hex())
    if device.type == "cuda":
        parts.append(torch.cuda.get_rng_state(device).numpy().tobytes().hex())
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


@pytest.mark.parametrize(
    "device",
    [
        CPU,
        pytest.param(
            torch.device("cuda"),
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"),
        ),
    ],
    ids=["cpu", "cuda"],
)
def test_resume_restores_every_global_rng(faces, tmp_path, monkeypatch, device):
    """An augmentation that draws from Python's and numpy's RNGs (as a user's might), and
    dropout drawing from torch's (CUDA's on a GPU): after a kill and a resume in a process
    whose RNGs are elsewhere, every RNG is where the uninterrupted run's is."""
    real_transform = train_module.train_transform

    def drawing_transform(x, out_size, generator):
        random.random()
        np.random.rand()
        return real_transform(x, out_size, generator)

    monkeypatch.setattr(train_module, "train_transform", drawing_transform)
    config = StageConfig(epochs=3, lr_step_epoch=2, batch_size=64)
    data = stage_data(faces, kfold_roles(faces.folds, 3, 10, "heldout"))
    seen: dict[tuple[str, int], str] = {}

    def watch(run: str):
        def on_epoch(record):
            seen[(run, record["epoch"])] = _rng_fingerprint(device)
            if run == "killed" and record["epoch"] == 2:
                raise Interrupted

        return on_epoch

    train_stage(
        _model(len(faces.classes)), data, config, tmp_path / "a", CROP, device, watch("straight")
    )
    with pytest.raises(Interrupted):
        train_stage(
            _model(len(faces.classes)), data, config, tmp_path / "b", CROP, device, watch("killed")
        )
    assert seen[("killed", 2)] == seen[("straight", 2)]
    random.seed(99)  # a fresh process: every RNG elsewhere
    np.random.seed(99)
    torch.manual_seed(99)
    outcome = train_stage(
        _model(len(faces.classes)), data, config, tmp_path / "b", CROP, device, watch("resumed")
    )
    assert outcome.resumed_from_epoch == 2
    assert seen[("resumed", 3)] == seen[("straight", 3)]


def test_soft_targets_are_what_a_stage_trains_on(faces, tmp_path):
    """`StageData.train_targets` (FERPlus `probability`) replaces the labels in the loss:
    one-hot targets train exactly as the labels do, smoothed ones do not."""
    from dataclasses import replace

    config = StageConfig(epochs=1, lr_step_epoch=1, batch_size=64)
    data = stage_data(faces, kfold_roles(faces.folds, 2, 10, "heldout"))
    one_hot = torch.nn.functional.one_hot(data.train_labels, len(faces.classes)).float()
    smooth = 0.5 * one_hot + 0.5 / len(faces.classes)
    losses = []
    for targets in (None, one_hot, smooth):
        outcome = train_stage(
            _model(len(faces.classes)),
            replace(data, train_targets=targets),
            config,
            tmp_path / str(len(losses)),
            input_size=CROP,
            device=CPU,
        )
        losses.append(outcome.epochs[0]["train_loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6) and losses[2] != pytest.approx(
        losses[0], rel=1e-3
    )
