"""FER2013 and FERPlus as distributed.

FER2013 is one CSV, `fer2013.csv` (`emotion,pixels,Usage`): 48x48 grey faces as 2,304
space-separated values; emotion 0 angry, 1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise,
6 neutral; Usage `Training` (28,709, train), `PublicTest` (3,589, validation) and
`PrivateTest` (3,589, test). A face has no file: its image id is `fer` + its 0-based row
number (FERPlus's own naming), its content its pixels.

FERPlus relabels the same faces: `fer2013new.csv` beside `fer2013.csv`, same rows in the
same order, with the votes of 10 taggers over neutral ... contempt, unknown and NF (not a
face). Label modes: `majority`, FERPlus's rule (a single vote is noise and is removed; a
class needs more than half of the remaining votes; an image whose majority is unknown or
NF, or with no majority, is dropped and counted), and `probability` (the votes as a soft
target, docs/METHOD.md D-14: single votes removed, the rest normalised over the eight
classes; an image whose top vote is unknown or NF is dropped; no majority is needed).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from fer_core.data.listing import Listing, Row, csv_rows, label_code
from fer_core.errors import FerError

CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
CSV_FILE = "fer2013.csv"
PLUS_FILE = "fer2013new.csv"
COLUMNS = ("emotion", "pixels", "Usage")
SIDE = 48
USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
PLUS_CLASSES = [
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
]
PLUS_VOTES = (*PLUS_CLASSES, "unknown", "NF")
PLUS_COLUMNS = ("Usage", "Image name", *PLUS_VOTES)
LABEL_MODES = ("majority", "probability")


def looks_like_fer2013(root: Path) -> bool:
    return (root / CSV_FILE).is_file()


def image_id(row: int) -> str:
    """The id of the face on 0-based data row `row` (as FERPlus names its images)."""
    return f"fer{row:07d}"


def scan_fer2013(root: Path) -> Listing:
    """FER2013's rows with their split; the pixel count of each is checked here, their
    values when the faces are read (`read_pixels`)."""
    rows: list[Row] = []
    for number, (_, split, label) in enumerate(_fer_rows(root)):
        rows.append((image_id(number), label, split))
    return Listing(list(CLASSES), rows, files=False)


def scan_ferplus(root: Path, label_mode: str = "majority") -> Listing:
    """FERPlus labels on FER2013's faces: in `majority` mode the class of the vote
    majority; in `probability` mode the vote distribution (`Listing.targets`) with its top
    class as the row's label. The images the mode's rule drops are counted in `skipped`."""
    if label_mode not in LABEL_MODES:
        raise FerError(f"label_mode: {label_mode!r} is not one of {', '.join(LABEL_MODES)}")
    faces = list(_fer_rows(root))
    plus = root / PLUS_FILE
    rows: list[Row] = []
    skipped: dict[str, int] = {}
    targets: dict[str, list[float]] = {}
    rule = majority if label_mode == "majority" else distribution
    number = -1
    for number, (line, (usage, name, *counts)) in enumerate(csv_rows(plus, PLUS_COLUMNS)):
        where = f"{plus}:{line}"
        if number >= len(faces):
            raise FerError(f"{where}: row {number + 1} has no row in {CSV_FILE} ({len(faces)})")
        split = USAGE.get(usage)
        if split != faces[number][1]:
            raise FerError(
                f"{where}: Usage {usage!r} differs from row {number + 1} of "
                f"{CSV_FILE}; the two files must list the same faces in the same order"
            )
        if not name:
            skipped["not in FERPlus"] = skipped.get("not in FERPlus", 0) + 1
            continue
        outcome = rule(_votes(counts, where))
        if isinstance(outcome, str):
            skipped[outcome] = skipped.get(outcome, 0) + 1
            continue
        if isinstance(outcome, list):
            targets[image_id(number)] = outcome
            outcome = outcome.index(max(outcome))  # the top class (the first of a tie)
        rows.append((image_id(number), outcome, split))
    if number + 1 != len(faces):
        raise FerError(f"{plus}: has {number + 1} rows but {CSV_FILE} has {len(faces)}")
    return Listing(list(PLUS_CLASSES), rows, skipped, files=False, targets=targets)


def majority(votes: list[int]) -> int | str:
    """FERPlus's majority rule on one image's 10 vote counts (`PLUS_VOTES` order): the
    class index, or why the image is dropped (`unknown`, `not a face`, `no majority`).

    A class voted by a single tagger is noise and loses its vote; the top class must then
    hold more than half of the remaining votes (so a tie never wins); unknown and NF are
    not classes."""
    kept = [v if v > 1 else 0 for v in votes]
    top = max(kept)
    if top == 0 or top <= sum(kept) / 2:
        return "no majority"
    index = kept.index(top)
    if index == len(PLUS_CLASSES):
        return "unknown"
    if index == len(PLUS_CLASSES) + 1:
        return "not a face"
    return index


def distribution(votes: list[int]) -> list[float] | str:
    """The `probability` mode's soft target from one image's 10 vote counts: single votes
    removed (noise, as in `majority`), the rest normalised over the eight classes; or why
    the image is dropped (`unknown`, `not a face`: that column holds the top vote; `no
    votes`: nothing is left)."""
    kept = [v if v > 1 else 0 for v in votes]
    top = max(kept)
    if top == 0:
        return "no votes"
    index = kept.index(top)
    if index >= len(PLUS_CLASSES):
        return "unknown" if index == len(PLUS_CLASSES) else "not a face"
    classes = kept[: len(PLUS_CLASSES)]
    return [v / sum(classes) for v in classes]


def read_pixels(root: Path) -> dict[str, np.ndarray]:
    """Image id -> its 48x48 face (uint8, row-major) for every row of `fer2013.csv`."""
    path = root / CSV_FILE
    faces: dict[str, np.ndarray] = {}
    for number, (line, (_, pixels, _)) in enumerate(csv_rows(path, COLUMNS)):
        values = _pixel_values(pixels)
        if values is None:
            raise FerError(
                f"{path}:{line}: pixels {pixels[:30]!r}... are not {SIDE * SIDE} integers 0..255"
            )
        faces[image_id(number)] = values.astype(np.uint8)
    return faces


def _fer_rows(root: Path) -> list[tuple[int, str, int]]:
    """(line, split, label) of every row of `fer2013.csv`, pixel counts checked."""
    path = root / CSV_FILE
    found = []
    meaning = "0 angry ... 6 neutral"
    for line, (emotion, pixels, usage) in csv_rows(path, COLUMNS):
        where = f"{path}:{line}"
        split = USAGE.get(usage)
        if split is None:
            raise FerError(f"{where}: Usage {usage!r} is not one of {', '.join(USAGE)}")
        count = len(pixels.split())
        if count != SIDE * SIDE:
            raise FerError(f"{where}: pixels hold {count} values, need {SIDE * SIDE} (48x48)")
        found.append((line, split, label_code(emotion, range(len(CLASSES)), where, meaning)))
    if not found:
        raise FerError(f"{path}: has no rows")
    return found


def _votes(counts: list[str], where: str) -> list[int]:
    votes = []
    for key, text in zip(PLUS_VOTES, counts, strict=True):
        try:
            value = int(text)
        except ValueError:
            value = -1
        if value < 0:
            raise FerError(f"{where}: {key} vote {text!r} is not a count >= 0")
        votes.append(value)
    return votes


def _pixel_values(pixels: str) -> np.ndarray | None:
    """The 2,304 pixel values as uint8, or None when they are not that many integers 0..255."""
    with warnings.catch_warnings():  # a bad token ends the parse (a DeprecationWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        values = np.fromstring(pixels, dtype=np.int32, sep=" ")
    if values.size != SIDE * SIDE or values.min() < 0 or values.max() > 255:
        return None
    return values.astype(np.uint8)
