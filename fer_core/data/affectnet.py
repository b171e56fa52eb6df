"""AffectNet (manually annotated part) as distributed.

Layout::

    Manually_Annotated_file_lists/training.csv     the training split (414,798 rows)
    Manually_Annotated_file_lists/validation.csv   the official validation set
    Manually_Annotated_Images/<subDirectory_filePath>

CSV columns: subDirectory_filePath, face_x, face_y, face_width, face_height,
facial_landmarks, expression, valence, arousal. Expression codes 0 neutral, 1 happy, 2 sad,
3 surprise, 4 fear, 5 disgust, 6 anger, 7 contempt; 8 none, 9 uncertain and 10 non-face are
not expressions: dropped and counted. AffectNet-7 drops contempt too (counted). The face
box comes from the CSV, so no detector runs. The validation set is everyone's test set: it is
the `test` split here, and model selection holds out part of the training set.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from fer_core.data.listing import Listing, Row, csv_rows, label_code
from fer_core.errors import FerError

CLASSES = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt"]
NOT_EXPRESSIONS = {8: "none", 9: "uncertain", 10: "non-face"}
VARIANTS = ("8", "7")
LISTS_DIR = "Manually_Annotated_file_lists"
IMAGES_DIR = "Manually_Annotated_Images"
SPLIT_FILES = {"train": "training.csv", "test": "validation.csv"}
COLUMNS = (
    "subDirectory_filePath",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "facial_landmarks",
    "expression",
    "valence",
    "arousal",
)
USED = (*COLUMNS[:5], "expression")  # what the adapter reads of a row
Box = tuple[int, int, int, int]
# (where: file:line, image path relative to root, face box x0 y0 x1 y1, code, split)
Entry = tuple[str, str, Box, int, str]


def looks_like_affectnet(root: Path) -> bool:
    return (root / LISTS_DIR / SPLIT_FILES["train"]).is_file()


def scan_affectnet(root: Path, classes: str = "8") -> Listing:
    """AffectNet-8 or -7 from the two CSVs; non-expression rows (and contempt for -7) are
    counted in `skipped`, not errors."""
    if classes not in VARIANTS:
        raise FerError(f"classes: {classes!r} is not one of {', '.join(VARIANTS)}")
    names = CLASSES[: int(classes)]
    rows: list[Row] = []
    skipped: dict[str, int] = {}
    for _, path, _, code, split in _entries(root):
        if code >= len(names):
            reason = NOT_EXPRESSIONS.get(code) or f"{CLASSES[code]} (not in AffectNet-{classes})"
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        rows.append((path, code, split))
    return Listing(names, rows, skipped)


def read_boxes(root: Path) -> dict[str, tuple[Box, str]]:
    """Image path -> (its face box, where the CSV gives it), for every row."""
    return {path: (box, where) for where, path, box, _, _ in _entries(root)}


def _entries(root: Path) -> Iterator[Entry]:
    seen: set[str] = set()
    meaning = "0 neutral ... 7 contempt, 8-10 not an expression"
    for split, name in SPLIT_FILES.items():
        csv_path = root / LISTS_DIR / name
        for line, (relative, *box, expression) in csv_rows(csv_path, USED):
            where = f"{csv_path}:{line}"
            if not relative or relative.startswith("/") or ".." in relative.split("/"):
                raise FerError(
                    f"{where}: subDirectory_filePath {relative!r} is not a relative path"
                )
            path = f"{IMAGES_DIR}/{relative}"
            if path in seen:
                raise FerError(f"{where}: {relative!r} listed twice")
            seen.add(path)
            code = label_code(expression, range(0, 11), where, meaning)
            yield where, path, _box(box, where), code, split


def _box(texts: list[str], where: str) -> Box:
    values = []
    for key, text in zip(USED[1:5], texts, strict=True):
        try:
            values.append(int(float(text)))
        except ValueError:
            raise FerError(f"{where}: {key} {text!r} is not a number") from None
    x, y, width, height = values
    if width <= 0 or height <= 0:
        raise FerError(f"{where}: face box {values} has no area (width, height must be > 0)")
    return (x, y, x + width, y + height)
