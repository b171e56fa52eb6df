import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer_core.data.index import build_index
from fer_core.data.synthetic import cartoon
from fer_core.data.synthetic import twins as synth
from fer_core.errors import FerError


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _small_oulu(out: Path, seed: int = 0, **kwargs) -> Path:
    kwargs = {"image_size": (48, 36), "frames_per_sequence": (3, 4), "n_subjects": 3, **kwargs}
    return synth.write_oulu_twin(out, seed=seed, **kwargs)


def test_deterministic_for_a_seed(tmp_path):
    a = _digests(_small_oulu(tmp_path / "a", workers=1))
    b = _digests(_small_oulu(tmp_path / "b", workers=2))  # threads do not change the result
    c = _digests(_small_oulu(tmp_path / "c", seed=1))
    assert a == b
    assert a != c


def test_says_it_is_synthetic(ckplus_twin, oulu_twin):
    for root, name in [(ckplus_twin, "CK+"), (oulu_twin, "Oulu-CASIA")]:
        readme = (root / "README.txt").read_text()
        assert readme.startswith(f"SYNTHETIC DATA - THIS IS NOT {name}")
        assert json.loads((root / synth.PARAMS_FILE).read_text())["seed"] == 0


def test_ckplus_layout_and_emotion_files(ckplus_twin, roster_rows):
    frames = (3, 5)
    for row in roster_rows[:40]:
        subject, sequence = row["subject"], row["sequence"]
        pngs = sorted((ckplus_twin / "cohn-kanade-images" / subject / sequence).glob("*.png"))
        assert frames[0] <= len(pngs) <= frames[1]
        assert [p.name for p in pngs] == [
            f"{subject}_{sequence}_{i:08d}.png" for i in range(1, len(pngs) + 1)
        ]
        labels = list((ckplus_twin / "Emotion" / subject / sequence).iterdir())
        assert [p.name for p in labels] == [pngs[-1].stem + "_emotion.txt"]  # the last frame
        text = labels[0].read_text()
        assert text == f"   {int(row['emotion_code']):.7e}\n"  # as CK+: "   3.0000000e+00"


def test_intensity_rises_from_neutral():
    """Every expression starts from the subject's own neutral face and ends at its apex."""
    rng = np.random.default_rng(0)
    look = cartoon.random_look(rng, colour=False)

    def face(emotion: str, t: float) -> np.ndarray:
        params = cartoon.expression_at(emotion, t, look, cartoon.random_quirk(rng))
        return np.asarray(cartoon.draw_face((160, 120), "L", look, params), dtype=float)

    neutral = face("anger", 0.0)
    for emotion in cartoon.APEX:
        assert np.array_equal(face(emotion, 0.0), neutral)
    apexes = {e: face(e, 1.0) for e in ["anger", "contempt", "disgust", "fear", "happy",
                                        "sadness", "surprise"]}  # fmt: skip
    for emotion, apex in apexes.items():
        assert np.abs(apex - neutral).mean() > 0.1, emotion
        others = [np.abs(apex - other).mean() for e, other in apexes.items() if e != emotion]
        assert min(others) > 0.1, emotion
    half = face("surprise", 0.5)
    assert 0 < np.abs(half - neutral).mean() < np.abs(apexes["surprise"] - neutral).mean()


def test_png_writer_round_trips():
    rng = np.random.default_rng(0)
    for mode, shape in [("L", (13, 17)), ("RGB", (13, 17, 3))]:
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        image = Image.open(io.BytesIO(synth.png_bytes(Image.fromarray(pixels, mode))))
        image.verify()  # checksums
        image = Image.open(io.BytesIO(synth.png_bytes(Image.fromarray(pixels, mode))))
        assert image.mode == mode and np.array_equal(np.asarray(image), pixels)


def test_reuses_replaces_and_refuses(tmp_path):
    out = _small_oulu(tmp_path / "twin")
    marker = out / synth.PARAMS_FILE
    stamp = marker.stat().st_mtime_ns
    assert _small_oulu(out) == out and marker.stat().st_mtime_ns == stamp  # same params: reused
    with pytest.raises(FerError, match="overwrite"):
        _small_oulu(out, seed=3)  # another twin is there: not clobbered
    _small_oulu(out, seed=3, overwrite=True)
    assert json.loads(marker.read_text())["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["twin"]  # no temp folders left
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    with pytest.raises(FerError, match="other"):
        _small_oulu(other)
    assert (other / "mine.txt").read_text() == "keep me"


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(root, params, job):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth, "_write_oulu_subject", boom)
    with pytest.raises(RuntimeError):
        _small_oulu(tmp_path / "twin")
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path):
    with pytest.raises(FerError, match="image_size"):
        synth.write_oulu_twin(tmp_path / "x", image_size=(16, 16))
    with pytest.raises(FerError, match="frames_per_sequence"):
        synth.write_oulu_twin(tmp_path / "x", frames_per_sequence=(5, 2))
    bad = tmp_path / "roster.csv"
    bad.write_text("subject,sequence,emotion_code\nS005,001,9\n")
    with pytest.raises(FerError, match="roster.csv:2.*'9'"):
        synth.write_ckplus_twin(tmp_path / "x", bad)
    bad.write_text("subject,emotion\nS005,3\n")
    with pytest.raises(FerError, match="'sequence'"):
        synth.write_ckplus_twin(tmp_path / "x", bad)


def test_full_size_frame_shape(tmp_path):
    out = synth.write_oulu_twin(tmp_path / "o", n_subjects=1, frames_per_sequence=(1, 1))
    frame = next(out.rglob("*.jpeg"))
    assert Image.open(frame).size == (320, 240) and Image.open(frame).mode == "RGB"


@pytest.mark.slow
def test_learnable_by_a_tiny_cnn(tmp_path):
    """Expressions, not subjects, decide the class: a 3-conv CNN at 48 px, trained on 8 folds
    for a few epochs, scores far above chance on the 2 unseen-subject folds."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    root = synth.write_ckplus_twin(tmp_path / "ck", image_size=(96, 72), frames_per_sequence=(3, 4))
    index = build_index("ckplus", root)
    crops = []
    for record in index.records:
        image = Image.open(index.path_of(record)).convert("L")
        width, height = image.size
        box = ((width - height) // 2, 0, (width + height) // 2, height)
        crops.append(np.asarray(image.resize((48, 48), Image.Resampling.BILINEAR, box=box)))
    x = torch.tensor(np.stack(crops), dtype=torch.float32).unsqueeze(1) / 255
    x = (x - x.mean()) / x.std()
    y = torch.tensor([r.label for r in index.records])
    test = torch.tensor([r.fold in (1, 2) for r in index.records])
    torch.manual_seed(0)

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]

    # no global pooling: where a feature is (brow or mouth) is what tells expressions apart
    layers = [*block(1, 8), *block(8, 16), *block(16, 32), nn.Flatten(), nn.Linear(32 * 36, 7)]
    net = nn.Sequential(*layers)
    optimiser = torch.optim.Adam(net.parameters(), 3e-3)
    xt, yt = x[~test], y[~test]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: more threads only spin against each other
    try:
        for _ in range(6):
            for batch in torch.randperm(len(yt)).split(32):
                loss = F.cross_entropy(net(xt[batch]), yt[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        net.eval()
        with torch.no_grad():
            accuracy = (net(x[test]).argmax(1) == y[test]).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    majority = torch.bincount(y).max().item() / len(y)  # 0.25 (surprise)
    assert accuracy > majority + 0.2, accuracy
