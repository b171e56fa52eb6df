"""CK+ (Extended Cohn-Kanade) raw layout adapter.

Layout, as distributed::

    cohn-kanade-images/S005/001/S005_001_00000011.png
    Emotion/S005/001/S005_001_00000011_emotion.txt      one float, 1 anger ... 7 surprise

Only sequences with an Emotion file carry a label (327 of 593 in the real set); an Emotion
sequence folder without a file is normal and skipped. The caller keeps the last frames.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from fer_core.errors import FerError

CLASSES = ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"]
IMAGES_DIR = "cohn-kanade-images"
EMOTION_DIR = "Emotion"
_FRAME = re.compile(r"^.+_(\d+)\.png$", re.IGNORECASE)

# (path relative to root, subject, sequence, frame, label) for every frame of a sequence.
Frame = tuple[str, str, str, int, int]


def looks_like_ckplus(root: Path) -> bool:
    """True when `root` holds the two CK+ top folders."""
    return (root / IMAGES_DIR).is_dir() and (root / EMOTION_DIR).is_dir()


def scan_ckplus(root: Path) -> list[Frame]:
    """All frames of every labelled CK+ sequence under `root`, in a stable order."""
    if not looks_like_ckplus(root):
        raise FerError(
            f"root: {root} is not a CK+ folder: expected {IMAGES_DIR}/ and {EMOTION_DIR}/ "
            "in it; point --root at the folder that holds both"
        )
    frames: list[Frame] = []
    for subject_dir in _subdirs(root / EMOTION_DIR):
        for sequence_dir in _subdirs(subject_dir):
            label = _read_label(sequence_dir)
            if label is None:
                continue
            subject, sequence = subject_dir.name, sequence_dir.name
            image_dir = root / IMAGES_DIR / subject / sequence
            for frame, name in _sequence_frames(image_dir):
                path = f"{IMAGES_DIR}/{subject}/{sequence}/{name}"
                frames.append((path, subject, sequence, frame, label))
    if not frames:
        raise FerError(
            f"root: {root}/{EMOTION_DIR} holds no *_emotion.txt file; no CK+ sequence is "
            "labelled, check that the Emotion folder was extracted"
        )
    return frames


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_label(sequence_dir: Path) -> int | None:
    files = sorted(sequence_dir.glob("*_emotion.txt"))
    if not files:
        return None
    if len(files) > 1:
        names = ", ".join(f.name for f in files)
        raise FerError(f"{sequence_dir}: holds {len(files)} emotion files ({names}); keep one")
    text = files[0].read_text(encoding="utf-8", errors="replace").strip()
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value != int(value) or not 1 <= value <= len(CLASSES):
        raise FerError(
            f"{files[0]}: holds {text[:40]!r}; expected one number 1..7 "
            "(1 anger ... 7 surprise); fix or remove the file"
        )
    return int(value) - 1


def _sequence_frames(image_dir: Path) -> list[tuple[int, str]]:
    if not image_dir.is_dir():
        raise FerError(
            f"{image_dir}: missing, but its sequence has an Emotion file; restore the images "
            "or remove the Emotion file"
        )
    found: list[tuple[int, str]] = []
    for path in image_dir.iterdir():
        if path.name.startswith(".") or path.suffix.lower() != ".png":
            continue
        match = _FRAME.match(path.name)
        if match is None:
            raise FerError(
                f"{path}: not a CK+ frame name (SXXX_YYY_NNNNNNNN.png); rename or remove it"
            )
        found.append((int(match.group(1)), path.name))
    if not found:
        raise FerError(f"{image_dir}: sequence folder holds no .png frame; restore its images")
    return sorted(found)
