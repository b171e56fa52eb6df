"""The on-disk crop store: the same crops as the in-memory path, read by index, resumable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fer_core.data.faces import FaceSet, prepare_faces
from fer_core.data.index import build_index
from fer_core.data.store import STORE_DIR, CropStore, ShardRows, shard_path, write_store
from fer_core.errors import FerError
from tests.helpers import wait_until

CROP = 24
ROWS = 41  # rows per shard in these tests: several shards, the last one short


@pytest.fixture(scope="module")
def oulu_index(oulu_twin):
    return build_index("oulu", oulu_twin)


@pytest.fixture(scope="module")
def both(oulu_index, tmp_path_factory) -> tuple[FaceSet, FaceSet]:
    """The twin's crops prepared in memory and into the store."""
    memory, store = tmp_path_factory.mktemp("memory"), tmp_path_factory.mktemp("store")
    prepare_faces(oulu_index, memory, CROP, detector="center", storage="memory")
    prepare_faces(oulu_index, store, CROP, detector="center", storage="store", shard_rows=ROWS)
    return FaceSet.load(memory), FaceSet.load(store)


def test_the_store_holds_the_crops_of_the_in_memory_path(both):
    memory, store = both
    assert isinstance(store.images, CropStore) and isinstance(memory.images, torch.Tensor)
    assert store.images.shape == tuple(memory.images.shape)
    assert len(list(store.images.directory.glob("shard-*.npy"))) == -(-len(memory) // ROWS)
    assert torch.equal(store.images[:], memory.images)
    assert torch.equal(store.detected, memory.detected)
    assert torch.equal(store.labels, memory.labels) and store.image_ids == memory.image_ids


def test_reads_by_index_in_any_order_across_shards(both):
    memory, store = both
    rows = torch.tensor([len(memory) - 1, 0, ROWS, ROWS - 1, 5, 5, ROWS + 1, 2 * ROWS])
    assert torch.equal(store.images[rows], memory.images[rows])
    mask = memory.folds == 3
    assert torch.equal(store.images[mask], memory.images[mask])
    assert torch.equal(store.images[7], memory.images[7])
    with pytest.raises(FerError, match="out of range"):
        store.images[torch.tensor([len(memory)])]


def test_a_shard_missing_is_named_on_load(oulu_index, tmp_path):
    prepare_faces(oulu_index, tmp_path, CROP, detector="center", storage="store", shard_rows=ROWS)
    shard_path(tmp_path / STORE_DIR, 1).unlink()
    with pytest.raises(FerError, match=r"shard-00001\.npy is missing or truncated"):
        FaceSet.load(tmp_path)


PREPARE = """
import sys, time
from pathlib import Path
from fer_core.data.faces import prepare_faces
from fer_core.data.index import build_index

def progress(done, total):
    if done > {rows}:  # the first shard is on its way to disk: hold here until killed
        time.sleep(3600)

prepare_faces(build_index("oulu", Path(sys.argv[1])), Path(sys.argv[2]), {crop},
              detector="center", storage="store", shard_rows={rows}, progress=progress)
"""


def test_preparation_killed_mid_way_resumes_without_redoing_done_shards(
    oulu_twin, oulu_index, both, tmp_path
):
    out = tmp_path / "faces"
    child = subprocess.Popen(
        [sys.executable, "-c", PREPARE.format(rows=ROWS, crop=CROP), str(oulu_twin), str(out)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )
    first = shard_path(out / STORE_DIR, 0)
    try:
        wait_until(lambda: first.is_file() or child.poll() is not None, timeout=120, what="shard")
        assert child.poll() is None, "preparation ended before it could be killed"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert not (out / "faces.json").exists()
    written = first.stat().st_mtime_ns, first.stat().st_ino
    calls: list[tuple[int, int]] = []
    prepare_faces(
        oulu_index,
        out,
        CROP,
        detector="center",
        storage="store",
        shard_rows=ROWS,
        progress=lambda done, total: calls.append((done, total)),
    )
    n = len(oulu_index.records)
    assert calls[-1] == (n - ROWS, n - ROWS)  # only the rows of the shards left were cropped
    assert (first.stat().st_mtime_ns, first.stat().st_ino) == written
    assert json.loads((out / "faces.json").read_text())["storage"] == "store"
    assert torch.equal(FaceSet.load(out).images[:], both[0].images)


def test_a_store_of_other_crops_is_replaced_not_mixed(tmp_path):
    def rows(value: int):
        def make(start: int, stop: int, tick) -> ShardRows:
            k = stop - start
            tick(k)
            return ShardRows(
                np.full((k, 3, 8, 8), value, np.uint8),
                np.zeros((k, 4), np.float32),
                np.zeros(k, bool),
                np.zeros(k, np.float32),
            )

        return make

    assert write_store(tmp_path, 10, 8, "a", rows(1), rows_per_shard=4) == 0
    assert write_store(tmp_path, 10, 8, "a", rows(2), rows_per_shard=4) == 3  # all reused
    assert int(CropStore(tmp_path)[:].max()) == 1
    assert write_store(tmp_path, 10, 8, "b", rows(3), rows_per_shard=4) == 0
    store = CropStore(tmp_path)
    assert store.fingerprint == "b" and bool((store[:] == 3).all())


def test_auto_storage_picks_the_store_by_size_and_reuses_it(oulu_index, tmp_path, monkeypatch):
    from fer_core.data import faces as faces_module

    prepare_faces(oulu_index, tmp_path / "small", CROP, detector="center")
    assert json.loads((tmp_path / "small" / "faces.json").read_text())["storage"] == "memory"
    crop_bytes = len(oulu_index.records) * 3 * CROP * CROP
    monkeypatch.setattr(faces_module, "STORE_MIN_BYTES", crop_bytes)
    report = prepare_faces(oulu_index, tmp_path / "large", CROP, detector="center")
    assert json.loads((tmp_path / "large" / "faces.json").read_text())["storage"] == "store"
    assert report.reused == 0
    again = prepare_faces(oulu_index, tmp_path / "large", CROP, detector="center")
    assert again.reused == len(oulu_index.records)
    assert isinstance(FaceSet.load(tmp_path / "large").images, CropStore)
