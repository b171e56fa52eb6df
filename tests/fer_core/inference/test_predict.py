"""fer_core.inference.predict without MTCNN (a model trained on centre crops): chunked
scoring with progress, the file listing, and the errors that name the file at fault."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fer_core.checkpoints import save
from fer_core.data.augment import test_transform
from fer_core.errors import FerError
from fer_core.inference.card import write_card
from fer_core.inference.predict import CHUNK, LoadedUnit, input_files, load_units, predict_files
from fer_core.models import build_model

CLASSES = ["anger", "happy", "sadness"]


def _unit(seed: int = 0) -> LoadedUnit:
    torch.manual_seed(seed)
    model = build_model("tiny", len(CLASSES)).eval()
    torch.nn.init.normal_(model.head.weight, std=0.5)
    card = {
        "unit_id": f"u{seed}", "fold": seed + 1, "classes": CLASSES, "input_size": 32,
        "crop": {"detector": "center", "crop_size": 40, "margin": 0.2, "crop_method": 1},
    }  # fmt: skip
    return LoadedUnit(model, card)


def test_chunks_with_progress_score_the_centre_square(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(CHUNK + 6):
        pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i:03d}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    files = input_files([tmp_path])
    assert len(files) == CHUNK + 6 and files == sorted(files)
    calls = []
    unit = _unit()
    rows = predict_files(files, [unit], progress=lambda done, total: calls.append((done, total)))
    assert calls == [(CHUNK, CHUNK + 6), (CHUNK + 6, CHUNK + 6)]
    assert len(rows) == CHUNK + 6 and {r["face"] for r in rows} == {"center"}
    assert (rows[0]["box_x0"], rows[0]["box_y0"], rows[0]["box_x1"]) == (8.0, 0.0, 56.0)

    # by hand: the centre 48 x 48 square, resized to the crop size, then scored
    frame = Image.open(files[0]).convert("RGB")
    crop = frame.resize((40, 40), Image.Resampling.BILINEAR, box=(8, 0, 56, 48))
    x = torch.from_numpy(np.asarray(crop).copy()).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = torch.softmax(unit.model(test_transform(x, 32)), dim=1)[0]
    got = torch.tensor([rows[0][f"p_{name}"] for name in CLASSES])
    assert torch.allclose(got, expected, atol=1e-6)
    assert rows[0]["predicted"] == CLASSES[int(expected.argmax())]


def test_an_unreadable_image_is_named(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(FerError, match="broken.png: cannot read image"):
        predict_files([bad], [_unit()])
    with pytest.raises(FerError, match="missing.jpg: no such image file or folder"):
        input_files([tmp_path / "missing.jpg"])


def test_units_of_different_models_do_not_form_an_ensemble(tmp_path):
    first, other = _unit(0), _unit(1)
    other.card["classes"] = ["a", "b", "c"]
    work = [tmp_path / "w0", tmp_path / "w1"]
    for directory, unit in zip(work, (first, other), strict=True):
        directory.mkdir()
        torch.save({"model": unit.model.state_dict(), "epoch": 1}, directory / "best.pt")
        card = {**unit.card, "backbone": "tiny", "normalisation": {}, "dataset": "d"}
        (directory / "best.json").write_text(json.dumps(card))
    with pytest.raises(FerError, match="differ in classes"):
        load_units(work, "cpu")


def _write_video(path, frames: list[np.ndarray], rate: int = 5) -> None:
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_a_video_gives_a_row_per_frame_as_its_frames_as_images_would(tmp_path):
    av = pytest.importorskip("av")
    rng = np.random.default_rng(0)
    video = tmp_path / "clip.mp4"
    _write_video(video, [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)])
    with av.open(str(video)) as container:  # the decoded frames, saved losslessly
        stills = []
        for i, frame in enumerate(container.decode(video=0)):
            stills.append(tmp_path / f"frame{i}.png")
            frame.to_image().save(stills[-1])
    unit = _unit()
    calls = []
    rows = predict_files([video], [unit], progress=lambda done, total: calls.append((done, total)))
    assert [r["frame"] for r in rows] == [0, 1, 2] and calls == [(3, 3)]
    assert [r["time"] for r in rows] == pytest.approx([0.0, 0.2, 0.4])
    assert {r["image"] for r in rows} == {str(video)}
    expected = predict_files(stills, [unit])
    assert [r["frame"] for r in expected] == [None, None, None]
    for got, want in zip(rows, expected, strict=True):
        assert [got[f"p_{c}"] for c in CLASSES] == [want[f"p_{c}"] for c in CLASSES]


def test_a_timm_unit_predicts_from_its_card_and_checkpoint(tmp_path):
    """A unit on a timm backbone, as a run leaves it (best.pt, checkpoints.json, best.json),
    loads and scores an image as its model does at its pretrained size and normalisation."""
    torch.manual_seed(0)
    model = build_model("timm:test_vit", len(CLASSES)).eval()
    torch.nn.init.normal_(model.head.weight, std=0.5)
    work, data = tmp_path / "unit", tmp_path / "data"
    work.mkdir()
    data.mkdir()
    (data / "faces.json").write_text(
        json.dumps({"detector": "center", "crop_size": 176, "margin": 0.2, "crop_method": 1})
    )
    save({"model": model.state_dict(), "epoch": 1}, work, "best.pt")
    spec = {
        "unit_id": "u0", "dataset": "d", "fold": 1, "n_folds": 10, "backbone": "timm:test_vit",
        "strategy": "ce", "stage": 1, "weights": "none", "data_dir": str(data),
    }  # fmt: skip
    write_card(work, spec, CLASSES, input_size=160)
    card = json.loads((work / "best.json").read_text())
    assert card["input_norm"] == "inception" and card["normalisation"]["mean"] == [0.5] * 3
    [unit] = load_units([work], "cpu")
    image = tmp_path / "face.png"
    pixels = np.random.default_rng(0).integers(0, 256, (176, 176, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image)
    [row] = predict_files([image], [unit])
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = torch.softmax(model(test_transform(x, 160)), dim=1)[0]
    got = torch.tensor([row[f"p_{name}"] for name in CLASSES])
    assert torch.allclose(got, expected, atol=1e-5)


def test_a_model_trained_on_a_datasets_boxes_crops_new_images_on_mtcnns_box(tmp_path):
    """A new image has no dataset box (AffectNet's CSV): MTCNN's stands in, as for a model
    trained on MTCNN's crops, never the centre square (a face off-centre would be missed)."""
    skimage_data = pytest.importorskip("skimage.data")
    photo = tmp_path / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).save(photo)
    boxed, detected = _unit(), _unit()
    boxed.card["crop"] = {**boxed.card["crop"], "detector": "box"}
    detected.card["crop"] = {**detected.card["crop"], "detector": "mtcnn"}
    [row] = predict_files([photo], [boxed])
    [reference] = predict_files([photo], [detected])
    assert row["face"] == "detected" and row["face_probability"] > 0.9
    assert row == reference
    assert row["box_x1"] - row["box_x0"] < 256  # the face, not the 512 px centre square
