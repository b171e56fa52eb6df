"""Oulu-CASIA raw layout adapter (VL camera, Strong illumination).

Layout::

    OriginalImg/VL/Strong/P001/Anger/000.jpeg ... (80 subjects x 6 expressions)

The paper uses the visible-light camera under normal illumination; the caller keeps the last
frames of each sequence.
"""

from __future__ import annotations

from pathlib import Path

from fer_core.data.layout import Frame, numbered_frames, subdirs
from fer_core.errors import FerError

CLASSES = ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]
FOLDERS = {name.capitalize(): label for label, name in enumerate(CLASSES)}
BASE_DIR = "OriginalImg/VL/Strong"
_SUFFIXES = (".jpeg", ".jpg")


def looks_like_oulu(root: Path) -> bool:
    """True when `root` holds the VL/Strong folder of Oulu-CASIA."""
    return (root / BASE_DIR).is_dir()


def scan_oulu(root: Path) -> list[Frame]:
    """All frames of every Oulu-CASIA VL/Strong sequence under `root`, in a stable order."""
    if not looks_like_oulu(root):
        raise FerError(
            f"root: {root} is not an Oulu-CASIA folder: expected {BASE_DIR}/ in it; point "
            "--root at the folder that holds OriginalImg"
        )
    frames: list[Frame] = []
    for subject_dir in subdirs(root / BASE_DIR):
        for expression_dir in subdirs(subject_dir):
            label = FOLDERS.get(expression_dir.name)
            if label is None:
                raise FerError(
                    f"{expression_dir}: unknown expression folder; expected one of "
                    f"{', '.join(FOLDERS)}"
                )
            subject, sequence = subject_dir.name, expression_dir.name
            frames_here = numbered_frames(
                expression_dir, _SUFFIXES, _frame_number, "Oulu-CASIA: NNN.jpeg"
            )
            for frame, name in frames_here:
                path = f"{BASE_DIR}/{subject}/{sequence}/{name}"
                frames.append((path, subject, sequence, frame, label))
    if not frames:
        raise FerError(f"root: {root / BASE_DIR} holds no subject folder (P001 ...)")
    return frames


def _frame_number(name: str) -> int | None:
    stem = name.rsplit(".", 1)[0]
    return int(stem) if stem.isdigit() else None
