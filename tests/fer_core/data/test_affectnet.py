"""AffectNet read as distributed: its two CSVs, non-expression rows counted, the CSV's face
boxes cropped (no detector), AffectNet-8 and -7."""

from __future__ import annotations

import shutil

import torch
from PIL import Image

from fer_core.data import affectnet
from fer_core.data.faces import FaceSet, crop_frame, prepare_faces
from fer_core.data.index import build_index, dataset_fingerprint
from fer_core.data.synthetic.wild import write_lists

# Published AffectNet (manually annotated) training counts: neutral, happy, sad, surprise,
# fear, disgust, anger, contempt; none, uncertain, non-face. Validation: 500 per category.
TRAIN = [74874, 134415, 25459, 14090, 6378, 3803, 24882, 3750]
NOT_EXPRESSIONS = {"none": 33088, "uncertain": 11645, "non-face": 82414}


def test_the_twin_at_scale_1_has_the_published_splits_and_counts(tmp_path):
    write_lists("affectnet", tmp_path, 1.0)  # the CSVs alone: no 287k images
    eight = affectnet.scan_affectnet(tmp_path, "8")
    train = [label for _, label, split in eight.rows if split == "train"]
    test = [label for _, label, split in eight.rows if split == "test"]
    assert len(train) == 287651 and [train.count(k) for k in range(8)] == TRAIN
    assert len(test) == 4000 and [test.count(k) for k in range(8)] == [500] * 8
    assert eight.skipped == {k: n + 500 for k, n in NOT_EXPRESSIONS.items()}
    seven = affectnet.scan_affectnet(tmp_path, "7")
    assert len(seven.classes) == 7 and "contempt" not in seven.classes
    assert len(seven.rows) == len(eight.rows) - 3750 - 500
    assert seven.skipped["contempt (not in AffectNet-7)"] == 3750 + 500


def test_faces_are_cropped_from_the_csv_boxes(wild_twin, tmp_path):
    root = wild_twin("affectnet")
    index = build_index("affectnet", root)
    assert {r.split for r in index.records} == {"train", "test"}
    assert index.skipped == {"none": 67, "uncertain": 24, "non-face": 166}  # 0.002 x, per split
    margin, size = 0.2, 32
    report = prepare_faces(index, tmp_path / "faces", size, detector="box", margin=margin)
    faces = FaceSet.load(tmp_path / "faces")
    assert report.total == len(index) and tuple(faces.images.shape[1:]) == (3, size, size)
    boxes = affectnet.read_boxes(root)
    for i in (0, len(index) - 1):
        path = index.records[i].path
        with Image.open(root / path) as image:
            frame = image.convert("RGB")
        expected, _ = crop_frame(frame, (boxes[path][0], float("nan")), size, margin)
        centre, _ = crop_frame(frame, None, size, margin)
        assert torch.equal(faces.images[i], expected)
        assert not torch.equal(expected, centre)  # the box moved the crop


def test_a_changed_face_box_changes_the_identity(wild_twin, tmp_path):
    root = shutil.copytree(wild_twin("affectnet"), tmp_path / "copy")
    before = dataset_fingerprint(build_index("affectnet", root, verify=False))
    csv = root / affectnet.LISTS_DIR / "validation.csv"
    lines = csv.read_text().splitlines()
    name, x, *rest = lines[1].split(",")
    lines[1] = ",".join([name, str(int(x) + 1), *rest])
    csv.write_text("\n".join(lines) + "\n")
    assert dataset_fingerprint(build_index("affectnet", root, verify=False)) != before
