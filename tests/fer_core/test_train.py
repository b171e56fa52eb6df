"""train_stage on the synthetic twin: it learns, resumes exactly, and refuses NaN."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fer_core import train as train_module
from fer_core.checkpoints import BEST, DIGESTS, LAST, load_best
from fer_core.config import StageConfig
from fer_core.data.faces import FaceSet, prepare_faces
from fer_core.data.index import DatasetIndex
from fer_core.data.protocol import kfold_roles
from fer_core.data.store import STORE_DIR, CropStore, ShardRows, write_store
from fer_core.errors import FerError
from fer_core.models import build_model
from fer_core.train import batches, epoch_order, score, train_stage
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
    result = score(model, faces.images, test.nonzero().flatten(), faces.labels[test], CROP, CPU)
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
    real_augment = train_module.augment

    def drawing_augment(x, out_size, params):
        random.random()
        np.random.rand()
        return real_augment(x, out_size, params)

    monkeypatch.setattr(train_module, "augment", drawing_augment)
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
    """`StageData.targets` (FERPlus `probability`) replaces the labels in the loss:
    one-hot targets train exactly as the labels do, smoothed ones do not."""
    from dataclasses import replace

    config = StageConfig(epochs=1, lr_step_epoch=1, batch_size=64)
    data = stage_data(faces, kfold_roles(faces.folds, 2, 10, "heldout"))
    one_hot = torch.nn.functional.one_hot(faces.labels, len(faces.classes)).float()
    smooth = 0.5 * one_hot + 0.5 / len(faces.classes)
    losses = []
    for targets in (None, one_hot, smooth):
        outcome = train_stage(
            _model(len(faces.classes)),
            replace(data, targets=targets),
            config,
            tmp_path / str(len(losses)),
            input_size=CROP,
            device=CPU,
        )
        losses.append(outcome.epochs[0]["train_loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6) and losses[2] != pytest.approx(
        losses[0], rel=1e-3
    )


@pytest.fixture(scope="module")
def store_faces(twin_faces, tmp_path_factory) -> FaceSet:
    """The same twin's crops, prepared into the on-disk store (several shards)."""
    out = tmp_path_factory.mktemp("store")
    index = DatasetIndex.read(twin_faces / "index.parquet")
    prepare_faces(index, out, CROP, detector="center", storage="store", shard_rows=300)
    faces = FaceSet.load(out)
    assert isinstance(faces.images, CropStore)
    return faces


def test_store_and_memory_paths_give_identical_batches_and_training(faces, store_faces, tmp_path):
    data = stage_data(faces, kfold_roles(faces.folds, 2, 10, "heldout"))
    stored = stage_data(store_faces, kfold_roles(store_faces.folds, 2, 10, "heldout"))
    assert torch.equal(data.train_rows, stored.train_rows)
    order = data.train_rows[epoch_order(data.train_labels, "shuffle", torch.Generator())]
    pairs = zip(
        batches(data.images, list(torch.split(order, 64)), CPU),
        batches(stored.images, list(torch.split(order, 64)), CPU),
        strict=True,
    )
    assert all(torch.equal(a, b) for a, b in pairs)

    config = StageConfig(epochs=2, lr_step_epoch=None, batch_size=64, sampler="balanced")
    memory_model, store_model = _model(len(faces.classes)), _model(len(faces.classes))
    one = train_stage(memory_model, data, config, tmp_path / "memory", CROP, CPU)
    two = train_stage(store_model, stored, config, tmp_path / "store", CROP, CPU)
    keys = ("train_loss", "train_accuracy", "selection_accuracy")
    assert [[e[k] for k in keys] for e in one.epochs] == [[e[k] for k in keys] for e in two.epochs]
    for key, value in memory_model.state_dict().items():
        assert torch.equal(store_model.state_dict()[key], value), key


def test_balanced_sampler_draws_every_class_equally_often():
    labels = torch.tensor([0] * 2000 + [1] * 200 + [2] * 20 + [3] * 5)
    generator = torch.Generator().manual_seed(0)
    drawn = torch.cat([epoch_order(labels, "balanced", generator) for _ in range(10)])
    share = torch.bincount(labels[drawn], minlength=4).double() / len(drawn)
    # 22,250 draws: a class's share has a standard deviation of 0.003; 0.02 is > 6 of them
    assert torch.allclose(share, torch.full((4,), 0.25, dtype=torch.double), atol=0.02), share
    shuffled = epoch_order(labels, "shuffle", generator)
    assert torch.equal(shuffled.sort().values, torch.arange(len(labels)))


def test_the_sampler_is_part_of_a_stage_s_identity_only_when_set():
    assert "sampler" not in StageConfig().to_dict()  # existing unit ids stay as they were
    assert StageConfig(sampler="balanced").to_dict()["sampler"] == "balanced"
    with pytest.raises(FerError, match="sampler: 'uniform' is not one of shuffle, balanced"):
        StageConfig(sampler="uniform")


PEAK_RSS = """
import resource, sys, numpy as np, torch
from pathlib import Path
from fer_core.data.augment import train_transform
from fer_core.data.faces import FaceSet
from fer_core.train import batches, epoch_order
from fer_core.heap import fix_mmap_threshold
from fer_core.data.protocol import kfold_roles
from fer_core.unit import stage_data

assert fix_mmap_threshold()  # as train_stage does
faces = FaceSet.load(Path(sys.argv[1]))
data = stage_data(faces, kfold_roles(faces.folds, 1, 10, "inner"))
generator = torch.Generator().manual_seed(0)
order = data.train_rows[epoch_order(data.train_labels, "balanced", generator)]
for rows in (order, data.select_rows):
    for crops in batches(data.images, list(torch.split(rows, 1024)), torch.device("cpu")):
        train_transform(crops, 32, generator)
# VmHWM, not ru_maxrss: Linux carries that over an exec from the (large) test process
status = Path("/proc/self/status").read_text().splitlines()
self_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
children_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(self_kib, children_kib)
"""


def _peak_rss_kib(n: int, folder: Path) -> tuple[int, int]:
    """Peak RSS (KiB) of a process that loads an n-crop dataset from the store, splits it into
    a unit's roles and reads and augments one balanced epoch and the selection role, and of
    its largest loader worker. (The model's part of a unit does not depend on n.)"""
    size = 48

    def rows(start: int, stop: int, tick) -> ShardRows:
        k = stop - start
        tick(k)
        shade = (np.arange(start, stop) % 251).astype(np.uint8)[:, None, None, None]
        return ShardRows(
            np.ascontiguousarray(np.broadcast_to(shade, (k, 3, size, size))),
            np.zeros((k, 4), np.float32),
            np.ones(k, bool),
            np.ones(k, np.float32),
        )

    fingerprint = f"synthetic-{n}"
    write_store(folder / STORE_DIR, n, size, fingerprint, rows)
    labels = np.random.default_rng(0).integers(0, 7, n)
    blob = {
        "format": 1,
        "storage": "store",
        "images": torch.zeros((0, 3, size, size), dtype=torch.uint8),
        "labels": torch.from_numpy(labels),
        "folds": torch.from_numpy(np.arange(n) % 10 + 1),
        "subjects": [f"s{i % 1000}" for i in range(n)],
        "image_ids": [f"img{i}" for i in range(n)],
        "classes": [f"c{k}" for k in range(7)],
        "dataset": "synthetic",
        "fingerprint": fingerprint,
    }
    torch.save(blob, folder / "faces.pt")
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(folder)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[-2]), int(out[-1])


@pytest.mark.slow
def test_a_unit_s_peak_memory_does_not_grow_with_the_store(tmp_path):
    small = _peak_rss_kib(20_000, tmp_path / "small")
    large = _peak_rss_kib(200_000, tmp_path / "large")
    # 180,000 more crops are 1.2 GiB in memory; their labels, ids and row indices ~40 MiB
    assert large[0] - small[0] < 96 * 1024, (small, large)
    assert large[1] - small[1] < 96 * 1024, (small, large)
