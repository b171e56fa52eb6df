"""What the CK+ and Oulu-CASIA trees have in common: subject folders of sequence folders of
numbered frames. The dataset modules say how their folders are named and labelled."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fer_core.errors import FerError

# (path relative to root, subject, sequence, frame, label) for every frame of a sequence.
Frame = tuple[str, str, str, int, int]


def subdirs(folder: Path) -> list[Path]:
    """The visible sub-folders of `folder`, sorted: the stable order of subjects/sequences."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def numbered_frames(
    folder: Path, suffixes: tuple[str, ...], number: Callable[[str], int | None], expected: str
) -> list[tuple[int, str]]:
    """(frame number, file name) of the images in `folder`, in frame order.

    `number` reads a file name's frame number (None: not a frame name, which is an error
    naming `expected`, the form a frame name takes); files of other suffixes are ignored.
    """
    found: list[tuple[int, str]] = []
    for path in folder.iterdir():
        if path.name.startswith(".") or path.suffix.lower() not in suffixes:
            continue
        frame = number(path.name)
        if frame is None:
            raise FerError(f"{path}: not a frame name ({expected}); rename or remove it")
        found.append((frame, path.name))
    if not found:
        raise FerError(
            f"{folder}: sequence folder holds no {suffixes[0]} frame; restore its images"
        )
    return sorted(found)
