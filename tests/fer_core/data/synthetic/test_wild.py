"""The fixed-split twins: every class in every split at any scale, written atomically and
reused, refused at a bad scale, and marked as synthetic."""

from __future__ import annotations

import json

import pytest

from fer_core.data import wild
from fer_core.data.synthetic.wild import KINDS, scaled_counts, write_wild_twin
from fer_core.errors import FerError


@pytest.mark.parametrize("kind", KINDS)
def test_every_class_is_in_every_split_of_a_small_twin(kind, wild_twin):
    root = wild_twin(kind)
    listing = wild.scan(kind, root, wild.resolve_options(kind, {}, kind))
    splits = {split for _, _, split in listing.rows}
    for split in splits:
        assert {label for _, label, s in listing.rows if s == split} == set(
            range(len(listing.classes))
        )
    assert "THIS IS NOT" in (root / "README.txt").read_text()
    assert json.loads((root / "SYNTHETIC.json").read_text())["kind"] == kind


def test_a_scale_keeps_at_least_one_image_per_split_and_class():
    counts = scaled_counts("affectnet", 0.0001)
    assert counts["test"] == [1] * 11 and counts["train"][1] == 13  # 134,415 x 1e-4
    assert scaled_counts("rafdb", 1.0)["test"] == [329, 74, 160, 1185, 478, 162, 680]


def test_a_twin_is_reused_and_a_bad_scale_writes_nothing(tmp_path, wild_twin):
    root = wild_twin("rafdb")
    stamp = (root / "SYNTHETIC.json").stat().st_mtime_ns
    assert write_wild_twin("rafdb", root, 0.01) == root
    assert (root / "SYNTHETIC.json").stat().st_mtime_ns == stamp
    for scale in (0, 1.5):
        with pytest.raises(FerError, match=f"scale: {scale}"):
            write_wild_twin("rafdb", tmp_path / "bad", scale)
    assert not (tmp_path / "bad").exists()
