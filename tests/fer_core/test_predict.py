"""fer_core.inference.predict without MTCNN (a model trained on centre crops): chunked
scoring with progress, the file listing, and the errors that name the file at fault."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fer_core.data.augment import test_transform
from fer_core.errors import FerError
from fer_core.inference.predict import CHUNK, LoadedUnit, image_files, load_units, predict_files
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
    files = image_files([tmp_path])
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
        image_files([tmp_path / "missing.jpg"])


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
