"""Oulu-CASIA raw layout adapter (VL camera, Strong illumination).

Layout::

    OriginalImg/VL/Strong/P001/Anger/000.jpeg ... (80 subjects x 6 expressions)

The paper uses the visible-light camera under normal illumination; the caller keeps the last
frames of each sequence.
"""

from __future__ import annotations

from pathlib import Path

from fer_core.errors import FerError

CLASSES = ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]
FOLDERS = {name.capitalize(): label for label, name in enumerate(CLASSES)}
BASE_DIR = "OriginalImg/VL/Strong"
_SUFFIXES = (".jpeg", ".jpg")

# (path relative to root, subject, sequence, frame, label) for every frame of a sequence.
Frame = tuple[str, str, str, int, int]


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
    for subject_dir in _subdirs(root / BASE_DIR):
        for expression_dir in _subdirs(subject_dir):
            label = FOLDERS.get(expression_dir.name)
            if label is None:
                raise FerError(
                    f"{expression_dir}: unknown expression folder; expected one of "
                    f"{', '.join(FOLDERS)}"
                )
            subject, sequence = subject_dir.name, expression_dir.name
            for frame, name in _sequence_frames(expression_dir):
                path = f"{BASE_DIR}/{subject}/{sequence}/{name}"
                frames.append((path, subject, sequence, frame, label))
    if not frames:
        raise FerError(f"root: {root / BASE_DIR} holds no subject folder (P001 ...)")
    return frames


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _sequence_frames(folder: Path) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for path in folder.iterdir():
        if path.name.startswith(".") or path.suffix.lower() not in _SUFFIXES:
            continue
        try:
            found.append((int(path.stem), path.name))
        except ValueError:
            raise FerError(
                f"{path}: not an Oulu-CASIA frame name (expected NNN.jpeg); rename or remove it"
            ) from None
    if not found:
        raise FerError(f"{folder}: sequence folder holds no .jpeg frame; restore its images")
    return sorted(found)
