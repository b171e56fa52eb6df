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

from fer_core.data.layout import Frame, numbered_frames, subdirs
from fer_core.errors import FerError

CLASSES = ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"]
IMAGES_DIR = "cohn-kanade-images"
EMOTION_DIR = "Emotion"
_FRAME = re.compile(r"^.+_(\d+)\.png$", re.IGNORECASE)


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
    for subject_dir in subdirs(root / EMOTION_DIR):
        for sequence_dir in subdirs(subject_dir):
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
    return numbered_frames(image_dir, (".png",), _frame_number, "CK+: SXXX_YYY_NNNNNNNN.png")


def _frame_number(name: str) -> int | None:
    match = _FRAME.match(name)
    return int(match.group(1)) if match else None
