"""RAF-DB (basic emotions) as distributed.

Layout::

    EmoLabel/list_patition_label.txt     lines `train_00001.jpg 5`; labels 1..7
    Image/aligned/train_00001_aligned.jpg   100x100, already aligned (no detector needed)
    Image/original/train_00001.jpg          the original photo (MTCNN, as for CK+)

The split is the name's prefix: 12,271 `train_` and 3,068 `test_` images. RAF-DB has no
validation split of its own; the fixed protocol holds one out of the training set.
"""

from __future__ import annotations

from pathlib import Path

from fer_core.data.listing import Listing, Row, label_code
from fer_core.errors import FerError

CLASSES = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]
LIST_FILE = "EmoLabel/list_patition_label.txt"  # sic: the distributed file name
IMAGES = ("aligned", "original")
SPLIT_OF_PREFIX = {"train": "train", "test": "test"}


def looks_like_rafdb(root: Path) -> bool:
    return (root / LIST_FILE).is_file()


def image_path(name: str, images: str) -> str:
    """The relative path of list entry `name` (`train_00001.jpg`) in the `images` variant."""
    if images == "aligned":
        stem, _, suffix = name.rpartition(".")
        return f"Image/aligned/{stem}_aligned.{suffix}"
    return f"Image/original/{name}"


def scan_rafdb(root: Path, images: str = "aligned") -> Listing:
    """RAF-DB's list file as rows; every label must be 1..7 and every name train_/test_."""
    if images not in IMAGES:
        raise FerError(f"images: {images!r} is not one of {', '.join(IMAGES)}")
    path = root / LIST_FILE
    if not path.is_file():
        raise FerError(
            f"{path}: missing; RAF-DB's basic set ships it as {LIST_FILE} under the root"
        )
    rows: list[Row] = []
    seen: set[str] = set()
    meaning = "1 surprise ... 7 neutral"
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        parts = line.split()
        if len(parts) != 2:
            raise FerError(f"{where}: {line.strip()[:60]!r} is not `NAME LABEL`")
        name, text = parts
        split = SPLIT_OF_PREFIX.get(name.partition("_")[0])
        if split is None:
            raise FerError(f"{where}: name {name!r} starts with neither train_ nor test_")
        if name in seen:
            raise FerError(f"{where}: {name!r} listed twice")
        seen.add(name)
        label = label_code(text, range(1, len(CLASSES) + 1), where, meaning) - 1
        rows.append((image_path(name, images), label, split))
    if not rows:
        raise FerError(f"{path}: lists no image")
    return Listing(list(CLASSES), rows)
