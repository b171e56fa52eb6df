"""A dataset's content identity and the digest cache behind it: what changes it, what does not,
and that an unchanged tree is not read again."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from fer_core import digest_cache
from fer_core.data.faces import prepare_faces
from fer_core.data.identity import dataset_identity
from fer_core.data.index import build_index
from fer_core.digest_cache import DigestCache
from fer_core.errors import FerError
from tests.helpers import tiny_ckplus

IMAGE = "cohn-kanade-images/S002/001/S002_001_00000003.png"
EMOTION = "Emotion/S002/001/S002_001_00000003_emotion.txt"


@pytest.fixture
def settled(monkeypatch):
    """Files written by the test count as settled (not "racy"), so the cache remembers them
    without waiting out the racy window."""
    monkeypatch.setattr(digest_cache, "RACY_SECONDS", -1.0)


def _identity(root: Path, cache: DigestCache | None = None) -> str:
    return dataset_identity("ckplus", root, None, 2, cache or DigestCache(None))


def test_an_unchanged_tree_is_not_read_again(tmp_path, settled):
    root = tiny_ckplus(tmp_path / "ck")
    cold = DigestCache(tmp_path / "digests.json")
    first = _identity(root, cold)
    cold.save()
    assert cold.hashed == 18  # 6 subjects x the 3 kept frames
    warm = DigestCache(tmp_path / "digests.json")
    assert _identity(root, warm) == first
    assert warm.hashed == 0


def test_touch_copy_without_times_and_tool_files_in_the_root_keep_the_identity(tmp_path):
    root = tiny_ckplus(tmp_path / "ck")
    first = _identity(root)
    for path in root.rglob("*"):
        os.utime(path, (1e9, 1e9))  # touch, to a time long ago
    assert _identity(root) == first
    copy = tmp_path / "scratch" / "ck"
    shutil.copytree(root, copy, copy_function=shutil.copyfile)  # new times, new path
    assert _identity(copy) == first
    index = build_index("ckplus", root, n_folds=2)
    index.write(root / "index.parquet")
    prepare_faces(index, root / "faces-32", 32, detector="center")
    assert _identity(root) == first


def test_a_changed_label_pixel_or_fold_count_changes_the_identity(tmp_path):
    root = tiny_ckplus(tmp_path / "ck")
    first = _identity(root)
    (root / EMOTION).write_text("   5.0000000e+00\n")
    relabelled = _identity(root)
    assert relabelled != first
    image = Image.open(root / IMAGE).convert("RGB")
    image.putpixel((0, 0), tuple(255 - v for v in image.getpixel((0, 0))))
    image.save(root / IMAGE)
    assert _identity(root) not in (first, relabelled)
    assert dataset_identity("ckplus", root, None, 3, DigestCache(None)) != _identity(root)


def test_a_manifest_outside_the_root_counts_by_its_content(tmp_path):
    root = tiny_ckplus(tmp_path / "ck")
    manifest = tmp_path / "elsewhere" / "labels.csv"
    manifest.parent.mkdir()
    rows = [
        f"{p.relative_to(root)},S{i % 3},{'ab'[i % 2]}"
        for i, p in enumerate(sorted(root.rglob("*.png")))
    ]
    manifest.write_text("path,subject,label\n" + "\n".join(rows) + "\n")
    first = dataset_identity("manifest", root, manifest, 2, DigestCache(None))
    manifest.write_text(manifest.read_text().replace(",S0,a", ",S0,b", 1))
    assert dataset_identity("manifest", root, manifest, 2, DigestCache(None)) != first


def test_a_file_rewritten_with_its_size_and_mtime_restored_is_read_again(tmp_path, settled):
    path = tmp_path / "f.bin"
    path.write_bytes(b"a" * 64)
    before = path.stat()
    cache = DigestCache(tmp_path / "digests.json")
    old = cache.sha256(path)
    cache.save()
    path.write_bytes(b"b" * 64)  # same size, same inode
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime put back; ctime moves
    again = DigestCache(tmp_path / "digests.json")
    assert again.sha256(path) != old
    assert again.hashed == 1


def test_a_file_hashed_right_after_a_write_is_not_remembered(tmp_path):
    """Timestamps are coarse: a file changed again within the same tick would keep its stat,
    so a digest taken within the racy window is used but not cached."""
    path = tmp_path / "f.bin"
    path.write_bytes(b"fresh")
    cache = DigestCache(tmp_path / "digests.json")
    cache.sha256(path)
    cache.save()
    again = DigestCache(tmp_path / "digests.json")
    again.sha256(path)
    assert again.hashed == 1


def test_an_unreadable_cache_file_is_an_empty_cache(tmp_path):
    (tmp_path / "digests.json").write_text("{not json")
    path = tmp_path / "f.bin"
    path.write_bytes(b"x")
    assert DigestCache(tmp_path / "digests.json").sha256(path) == DigestCache(None).sha256(path)


def test_an_image_read_afresh_must_decode_and_a_refused_one_is_not_remembered(tmp_path, settled):
    """The decode check rides on hashing: a truncated frame fails the identity, naming it,
    every time until it is fixed (it never enters the cache)."""
    root = tiny_ckplus(tmp_path / "ck")
    image = root / IMAGE
    good = image.read_bytes()
    image.write_bytes(good[: len(good) // 2])
    for _ in range(2):
        cache = DigestCache(tmp_path / "digests.json")
        with pytest.raises(FerError, match=f"{image}: not a readable image"):
            _identity(root, cache)
        cache.save()
    image.write_bytes(good)
    assert _identity(root, DigestCache(tmp_path / "digests.json")) == _identity(root)
