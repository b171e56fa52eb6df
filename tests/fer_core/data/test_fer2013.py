"""FER2013 and FERPlus read as distributed: pixels in a CSV (no image files), Usage as the
split, FERPlus's votes and its majority rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fer_core.data import fer2013
from fer_core.data.faces import FaceSet, prepare_faces
from fer_core.data.index import build_index
from fer_core.data.synthetic.wild import write_lists

# Published FER2013 counts: angry, disgust, fear, happy, sad, surprise, neutral.
COUNTS = {
    "train": [3995, 436, 4097, 7215, 4830, 3171, 4965],  # Training 28,709
    "val": [467, 56, 496, 895, 653, 415, 607],  # PublicTest 3,589
    "test": [491, 55, 528, 879, 594, 416, 626],  # PrivateTest 3,589
}


@pytest.fixture(scope="module")
def scale_1(tmp_path_factory) -> object:
    root = tmp_path_factory.mktemp("fer-1")
    write_lists("ferplus", root, 1.0)  # fer2013.csv and fer2013new.csv
    return root


def test_the_twin_at_scale_1_has_the_published_splits_and_counts(scale_1):
    listing = fer2013.scan_fer2013(scale_1)
    assert not listing.files and listing.classes == fer2013.CLASSES
    for split, counts in COUNTS.items():
        labels = [label for _, label, s in listing.rows if s == split]
        assert [labels.count(k) for k in range(7)] == counts, split
    assert [sum(c) for c in COUNTS.values()] == [28709, 3589, 3589]


def test_ferplus_twin_at_scale_1_accounts_for_every_face(scale_1):
    """FERPlus's per-split majority counts are not published: every face of FER2013 is kept
    or counted as dropped, every class is in every split, and the dropped reasons are the
    rule's."""
    listing = fer2013.scan_ferplus(scale_1)
    assert len(listing.rows) + sum(listing.skipped.values()) == 35887
    assert set(listing.skipped) == {"unknown", "not a face", "no majority", "not in FERPlus"}
    for split in ("train", "val", "test"):
        assert {label for _, label, s in listing.rows if s == split} == set(range(8))


@pytest.mark.parametrize(
    ("votes", "outcome"),
    [
        ([10, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0),  # unanimous neutral
        ([0, 6, 4, 0, 0, 0, 0, 0, 0, 0], 1),  # 6 of 10: happiness
        ([0, 5, 5, 0, 0, 0, 0, 0, 0, 0], "no majority"),  # a tie never wins
        ([0, 5, 4, 0, 0, 0, 0, 0, 0, 1], 1),  # a single vote is noise: 5 of 9
        ([0, 4, 4, 1, 1, 0, 0, 0, 0, 0], "no majority"),  # 4 of 8 after removing singles
        ([0, 0, 0, 0, 0, 0, 0, 2, 1, 1], 7),  # contempt: 2 of 2 after removing singles
        ([2, 0, 0, 0, 0, 0, 0, 0, 8, 0], "unknown"),
        ([0, 3, 0, 0, 0, 0, 0, 0, 0, 7], "not a face"),
        ([1, 1, 1, 1, 1, 1, 1, 1, 1, 1], "no majority"),  # nothing left
    ],
)
def test_the_ferplus_majority_rule(votes, outcome):
    assert fer2013.majority(votes) == outcome


def test_faces_are_the_csv_pixels(wild_twin, tmp_path):
    root = wild_twin("fer2013")
    index = build_index("fer2013", root)
    assert index.records[0].path == "fer0000000" and index.records[0].split == "train"
    assert {r.split for r in index.records} == {"train", "val", "test"}
    prepare_faces(index, tmp_path / "faces", 48, detector="center")
    faces = FaceSet.load(tmp_path / "faces")
    pixels = fer2013.read_pixels(root)
    for i in (0, len(index) - 1):
        grey = torch.from_numpy(pixels[index.records[i].path].reshape(48, 48))
        assert torch.equal(faces.images[i], grey.expand(3, 48, 48))  # grey into 3 channels
    assert len({bytes(np.asarray(p)) for p in pixels.values()}) > 1


def test_ferplus_indexes_its_majority_labels(wild_twin):
    root = wild_twin("ferplus")
    index = build_index("ferplus", root)
    assert index.classes == fer2013.PLUS_CLASSES and "no majority" in index.skipped
    assert len(index) + sum(index.skipped.values()) == len(build_index("fer2013", root))


@pytest.mark.parametrize(
    ("votes", "outcome"),
    [
        ([0, 6, 4, 0, 0, 0, 0, 0, 0, 0], [0, 0.6, 0.4, 0, 0, 0, 0, 0]),
        ([0, 5, 5, 0, 0, 0, 0, 0, 0, 0], [0, 0.5, 0.5, 0, 0, 0, 0, 0]),  # no majority needed
        ([0, 5, 4, 0, 0, 0, 0, 0, 0, 1], [0, 5 / 9, 4 / 9, 0, 0, 0, 0, 0]),  # single vote: noise
        ([0, 4, 0, 0, 0, 0, 0, 0, 2, 4], [0, 1.0, 0, 0, 0, 0, 0, 0]),  # tie with NF: first wins
        ([3, 0, 0, 0, 0, 0, 0, 0, 7, 0], "unknown"),
        ([0, 3, 0, 0, 0, 0, 0, 0, 0, 7], "not a face"),
        ([1, 1, 1, 1, 1, 1, 1, 1, 1, 1], "no votes"),
    ],
)
def test_the_ferplus_probability_rule(votes, outcome):
    assert fer2013.distribution(votes) == pytest.approx(outcome)


def test_ferplus_probability_indexes_soft_targets_into_the_faces(wild_twin, tmp_path):
    root = wild_twin("ferplus")
    index = build_index("ferplus", root, options={"label_mode": "probability"})
    majority = build_index("ferplus", root)
    assert "no majority" not in index.skipped and len(index) > len(majority)
    for record in index.records:
        target = index.targets[record.path]
        assert sum(target) == pytest.approx(1) and target.index(max(target)) == record.label
    prepare_faces(index, tmp_path / "faces", 48, detector="center")
    faces = FaceSet.load(tmp_path / "faces")
    assert faces.targets is not None and faces.targets.shape == (len(index), 8)
    assert torch.allclose(faces.targets[5], torch.tensor(index.targets[index.records[5].path]))
    assert FaceSet.load(tmp_path / "faces").subset([1, 2]).targets.shape == (2, 8)
    index.write(tmp_path / "index.parquet")
    from fer_core.data.index import DatasetIndex, dataset_fingerprint

    assert DatasetIndex.read(tmp_path / "index.parquet").targets == index.targets
    assert dataset_fingerprint(index) != dataset_fingerprint(
        build_index("ferplus", root, options={"label_mode": "majority"})
    )
