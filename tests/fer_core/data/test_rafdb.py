"""RAF-DB (basic) read as distributed: its list file, its two image variants, on its twin."""

from __future__ import annotations

import pytest

from fer_core.data import rafdb
from fer_core.data.faces import FaceSet, prepare_faces
from fer_core.data.index import DatasetIndex, build_index
from fer_core.data.synthetic.wild import write_lists
from fer_core.errors import FerError

# Published RAF-DB basic counts (surprise, fear, disgust, happiness, sadness, anger, neutral).
TRAIN = [1290, 281, 717, 4772, 1982, 705, 2524]
TEST = [329, 74, 160, 1185, 478, 162, 680]


def test_the_twin_at_scale_1_has_the_published_splits_and_counts(tmp_path):
    write_lists("rafdb", tmp_path, 1.0)  # the list file alone: indexing only, no image
    listing = rafdb.scan_rafdb(tmp_path)
    for split, counts, total in (("train", TRAIN, 12271), ("test", TEST, 3068)):
        labels = [label for _, label, s in listing.rows if s == split]
        assert len(labels) == total
        assert [labels.count(k) for k in range(7)] == counts
    assert listing.classes == rafdb.CLASSES and listing.skipped == {}


def test_aligned_and_original_images_index_and_crop(wild_twin, tmp_path):
    root = wild_twin("rafdb")
    aligned = build_index("rafdb", root)
    original = build_index("rafdb", root, options={"images": "original"})
    assert len(aligned) == len(original) > 0
    first = aligned.records[0]
    assert first.path.startswith("Image/aligned/") and first.path.endswith("_aligned.jpg")
    assert original.records[0].path == "Image/original/" + first.path[14:].replace("_aligned", "")
    assert {r.split for r in aligned.records} == {"train", "test"}
    assert all(r.fold == 0 and r.subject == r.path for r in aligned.records)
    for split in ("train", "test"):  # every class kept in every split at a small scale
        assert {r.label for r in aligned.records if r.split == split} == set(range(7))
    # the index round-trips with its split column and options
    aligned.write(tmp_path / "index.parquet")
    again = DatasetIndex.read(tmp_path / "index.parquet")
    assert again == aligned and again.options == {"images": "aligned"}
    # an aligned image is the face: the whole image is cropped to crop_size
    report = prepare_faces(aligned, tmp_path / "faces", 32, detector="center")
    faces = FaceSet.load(tmp_path / "faces")
    assert report.total == len(aligned) and tuple(faces.images.shape[1:]) == (3, 32, 32)
    assert faces.image_ids == [r.path for r in aligned.records]


def test_a_changed_option_changes_the_identity(wild_twin):
    from fer_core.data.index import dataset_fingerprint

    root = wild_twin("rafdb")
    aligned = dataset_fingerprint(build_index("rafdb", root, verify=False))
    original = build_index("rafdb", root, verify=False, options={"images": "original"})
    assert dataset_fingerprint(original) != aligned


def test_unknown_option_or_value_is_refused(wild_twin):
    root = wild_twin("rafdb")
    with pytest.raises(FerError, match="images 'cropped' is not one of aligned, original"):
        build_index("rafdb", root, options={"images": "cropped"})
    with pytest.raises(FerError, match="'classes' is not an option of dataset kind 'rafdb'"):
        build_index("rafdb", root, options={"classes": 7})
