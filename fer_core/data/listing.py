"""What a fixed-split dataset's own list files say, before any image is opened.

RAF-DB, FER2013/FERPlus and AffectNet ship a list (a text file or CSVs) that names every
image with its label and its split; there are no subjects and no folds. Each adapter reads
its list into a `Listing`, and `index.build_index` turns it into records (subject = the
image itself, fold 0, split train/val/test). Reading a list opens no image, so the split
sizes and class counts of even AffectNet's 287k images are known in seconds.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fer_core.errors import FerError

SPLITS = ("train", "val", "test")

# (path relative to root, or the image id where the pixels are in a CSV; label; split)
Row = tuple[str, int, str]


@dataclass(frozen=True)
class Listing:
    """One dataset's images as its list files give them.

    `skipped` counts the rows the dataset itself marks as no expression (AffectNet codes
    8-10, FERPlus unknown/not-a-face/no majority), by reason: they are reported, not errors.
    `files` is False where the pixels live in the list itself (FER2013): no image file.
    `targets` maps an image to its soft target (one probability per class) where the label
    is a distribution (FERPlus `probability`); its row's label is then the top class."""

    classes: list[str]
    rows: list[Row]
    skipped: dict[str, int] = field(default_factory=dict)
    files: bool = True
    targets: dict[str, list[float]] = field(default_factory=dict)  # soft targets (FERPlus)


def csv_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    """(line number, the `required` columns' values in that order) of each row of a UTF-8
    CSV; a missing file or column, or a short row, is one FerError naming the file."""
    if not path.is_file():
        raise FerError(f"{path}: missing; the dataset's list file must be there as distributed")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            columns = [c.strip() for c in next(reader, [])]
            missing = [c for c in required if c not in columns]
            if missing:
                raise FerError(
                    f"{path}: missing column {missing[0]!r} (has {columns}); expected "
                    f"{', '.join(required)}"
                )
            at = [columns.index(c) for c in required]
            last = max(at)
            for row in reader:
                if len(row) <= last:
                    if not row:
                        continue
                    raise FerError(
                        f"{path}:{reader.line_num}: has {len(row)} values, need {len(columns)}"
                    )
                yield reader.line_num, [row[i].strip() for i in at]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise FerError(f"{path}: not a UTF-8 CSV file ({type(exc).__name__})") from None


def label_code(text: str, allowed: range, where: str, meaning: str) -> int:
    """An integer label code in `allowed`, else a FerError naming `where` and the value."""
    try:
        code = int(text)
    except ValueError:
        code = allowed.stop
    if code not in allowed:
        raise FerError(
            f"{where}: label {text!r} is out of range; expected {allowed.start}..."
            f"{allowed.stop - 1} ({meaning})"
        )
    return code
