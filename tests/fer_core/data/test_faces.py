import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fer_core.data import faces as faces_module
from fer_core.data.faces import FaceSet, centre_box, prepare_faces, square_box
from fer_core.data.index import build_index
from fer_core.errors import FerError

ASTRONAUT_FACE = (185, 70, 265, 165)  # x0, y0, x1, y1: checked by eye on skimage's astronaut


@pytest.fixture(scope="module")
def oulu_index(oulu_twin):
    return build_index("oulu", oulu_twin)


@pytest.fixture
def photo_dataset(tmp_path: Path) -> Path:
    """A tiny manifest dataset: a real face photo, a noise frame, a blank frame."""
    skimage_data = pytest.importorskip("skimage.data")
    root = tmp_path / "photos"
    root.mkdir()
    Image.fromarray(skimage_data.astronaut()).save(root / "astronaut.png")
    noise = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "noise.png")  # another size: its own MTCNN batch
    Image.new("L", (200, 300), 128).save(root / "blank.png")
    (root / "manifest.csv").write_text(
        "path,subject,label\nastronaut.png,a,happy\nnoise.png,b,neutral\nblank.png,b,neutral\n"
    )
    return root


def test_centre_crops_with_labels_and_folds(oulu_index, tmp_path):
    report = prepare_faces(oulu_index, tmp_path, 24, detector="center")
    n = len(oulu_index)
    assert (report.detected, report.fallback, report.reused, report.total) == (0, 0, 0, n)
    assert report.path == str(tmp_path / "faces.pt")
    blob = torch.load(tmp_path / "faces.pt", weights_only=True)
    assert blob["images"].shape == (n, 3, 24, 24) and blob["images"].dtype == torch.uint8
    faces = FaceSet.load(tmp_path)
    assert len(faces) == n and faces.dataset == "oulu"
    assert faces.labels.tolist() == [r.label for r in oulu_index.records]
    assert faces.folds.tolist() == [r.fold for r in oulu_index.records]
    assert faces.image_ids == [r.path for r in oulu_index.records]
    assert faces.subjects == [r.subject for r in oulu_index.records]
    assert faces.classes == oulu_index.classes and faces.fingerprint == report.fingerprint
    meta = json.loads((tmp_path / "faces.json").read_text())
    assert meta["fingerprint"] == report.fingerprint and meta["crop_size"] == 24
    assert meta["detector"] == "center" and meta["n"] == n
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces.json", "faces.pt"]


def test_centre_crop_is_the_middle_square(oulu_index, tmp_path):
    prepare_faces(oulu_index, tmp_path, 48, detector="center")
    faces = FaceSet.load(tmp_path)
    frame = Image.open(oulu_index.path_of(oulu_index.records[0])).convert("RGB")  # 64 x 48
    expected = np.asarray(frame.crop((8, 0, 56, 48))).transpose(2, 0, 1)
    assert np.array_equal(faces.images[0].numpy(), expected)


def test_mixed_frame_sizes_and_grey_frames(ckplus_twin, tmp_path):
    index = build_index("ckplus", ckplus_twin)
    sizes = {Image.open(index.path_of(r)).size for r in index.records}
    assert len(sizes) == 2  # grey 640x490-like and colour 640x480-like frames
    prepare_faces(index, tmp_path, 16, detector="center", batch_size=64)
    faces = FaceSet.load(tmp_path)
    grey = next(i for i, r in enumerate(index.records) if Image.open(index.path_of(r)).mode == "L")
    image = faces.images[grey]
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_reuses_when_nothing_changed_and_redoes_when_it_did(oulu_copy, tmp_path, monkeypatch):
    index = build_index("oulu", oulu_copy)
    first = prepare_faces(index, tmp_path, 16, detector="center")
    stamp = (tmp_path / "faces.pt").stat().st_mtime_ns

    def no_cropping(*args, **kwargs):
        raise AssertionError("should have reused the cache")

    with monkeypatch.context() as m:
        m.setattr(faces_module, "_batches_by_size", no_cropping)
        again = prepare_faces(index, tmp_path, 16, detector="center")
    assert again.reused == len(index) and again.fingerprint == first.fingerprint
    assert (tmp_path / "faces.pt").stat().st_mtime_ns == stamp

    other = prepare_faces(index, tmp_path, 20, detector="center")  # new settings
    assert other.reused == 0 and other.fingerprint != first.fingerprint

    frame = index.path_of(index.records[5])
    Image.new("RGB", (64, 48), (200, 10, 10)).save(frame)  # a source frame changed
    changed = prepare_faces(build_index("oulu", oulu_copy), tmp_path, 20, detector="center")
    assert changed.reused == 0 and changed.fingerprint != other.fingerprint
    assert FaceSet.load(tmp_path).images[5, 0].float().mean() > 150


@pytest.mark.slow  # real MTCNN: importing facenet-pytorch and detecting take seconds
def test_mtcnn_finds_a_real_face_and_falls_back_on_noise(photo_dataset, tmp_path, monkeypatch):
    index = build_index("manifest", photo_dataset, n_folds=2)
    report = prepare_faces(index, tmp_path, 64, detector="mtcnn", device="cpu")
    assert (report.detected, report.fallback, report.total) == (1, 2, 3)
    assert set(report.fallback_images) == {"noise.png", "blank.png"}
    blob = torch.load(tmp_path / "faces.pt", weights_only=True)
    row = [r.path for r in index.records].index("astronaut.png")
    assert bool(blob["detected"][row]) and blob["probs"][row] > 0.9
    x0, y0, x1, y1 = blob["boxes"][row].tolist()
    fx0, fy0, fx1, fy1 = ASTRONAUT_FACE
    assert x0 <= fx0 and y0 <= fy0 and x1 >= fx1 and y1 >= fy1  # the crop holds the face
    assert x1 - x0 == y1 - y0 < 200  # square, and a face crop rather than the frame
    meta = json.loads((tmp_path / "faces.json").read_text())
    assert meta["detected"] == 1 and sorted(meta["fallback_images"]) == ["blank.png", "noise.png"]

    def no_detector(device):
        raise AssertionError("should have reused the cache")

    monkeypatch.setattr(faces_module, "_load_mtcnn", no_detector)
    again = prepare_faces(index, tmp_path, 64, detector="mtcnn")
    assert (again.reused, again.detected, again.fallback) == (3, 1, 2)


def test_load_errors_say_how_to_fix(tmp_path, oulu_index):
    with pytest.raises(FerError, match="faces.pt does not exist.*orchestrator data faces"):
        FaceSet.load(tmp_path)
    prepare_faces(oulu_index, tmp_path, 16, detector="center")
    pt = tmp_path / "faces.pt"
    good = pt.read_bytes()
    pt.write_bytes(b"damaged on a shared file system")
    with pytest.raises(FerError, match="faces.pt.*orchestrator data faces"):
        FaceSet.load(tmp_path)
    (tmp_path / "faces.json").unlink()  # without the seal: the unpickler catches it
    with pytest.raises(FerError, match="faces.pt is corrupt"):
        FaceSet.load(tmp_path)
    pt.write_bytes(good)
    assert len(FaceSet.load(tmp_path)) == len(oulu_index)


def test_subset_and_fold_mask(oulu_index, tmp_path):
    prepare_faces(oulu_index, tmp_path, 16, detector="center")
    faces = FaceSet.load(tmp_path)
    mask = faces.fold_mask([2, 5])
    part = faces.subset(mask)
    assert set(part.folds.tolist()) == {2, 5} and set(part.subjects) == {"P002", "P005"}
    assert torch.equal(part.images, faces.images[mask])
    picked = faces.subset([3, 1])
    assert picked.image_ids == [faces.image_ids[3], faces.image_ids[1]]
    assert faces.subset(slice(0, 4)).labels.tolist() == faces.labels[:4].tolist()
    with pytest.raises(FerError, match="mask"):
        faces.subset(torch.ones(3, dtype=torch.bool))


def test_square_box_is_clamped_into_the_frame():
    assert square_box((40, 40, 60, 70), 200, 100, 0.0) == (35, 40, 65, 70)
    assert square_box((40, 40, 60, 70), 200, 100, 1.0) == (20, 25, 80, 85)
    assert square_box((0, 0, 20, 20), 200, 100, 0.5) == (0, 0, 30, 30)  # shifted, not cut
    assert square_box((180, 80, 200, 100), 200, 100, 0.0) == (180, 80, 200, 100)
    assert square_box((0, 0, 190, 95), 200, 100, 0.5) == (45, 0, 145, 100)  # frame-limited
    assert centre_box(640, 490) == (75, 0, 565, 490)
    assert centre_box(120, 160) == (0, 20, 120, 140)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"detector": "dlib"}, "detector"),
        ({"crop_size": 4}, "crop_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"margin": -0.1}, "margin"),
    ],
)
def test_bad_arguments(oulu_index, tmp_path, kwargs, key):
    args = {"crop_size": 16, "detector": "center", **kwargs}
    with pytest.raises(FerError, match=key):
        prepare_faces(oulu_index, tmp_path, **args)
