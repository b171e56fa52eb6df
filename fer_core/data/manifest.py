"""Your own dataset: a CSV manifest `path,subject,label` (optional `sequence`, `frame`,
`split`).

Paths are relative to the dataset root (POSIX slashes). Every listed image is used, with no
last-frames rule: the manifest already says which images count. Labels are class names; the
classes are the sorted unique names unless given, so the label order is reproducible.
An optional `split` column (`train`, `val` or `test` on every row) gives the dataset a fixed
split of its own (the `fixed` protocol, docs/METHOD.md D-18) instead of subject folds.
"""

from __future__ import annotations

import csv
from pathlib import Path, PurePosixPath

from fer_core.errors import FerError

REQUIRED = ("path", "subject", "label")
SPLITS = ("train", "val", "test")  # a fixed split's roles; "" = none (subject folds)
# What spreadsheets and pandas write for a missing value: read as class names they would
# become a class of their own ("nan") and train as one.
MISSING_LABELS = frozenset({"nan", "na", "n/a", "none", "null"})

# (path relative to root, subject, sequence, frame, label)
Frame = tuple[str, str, str, int, int]


def manifest_path(root: Path, manifest: str | Path | None) -> Path:
    """Where a dataset's manifest is: `manifest` relative to `root` unless absolute, and
    `ROOT/manifest.csv` when not given. Never relative to the current folder, so a grid names
    the same file wherever `launch` runs and wherever its preparation job runs."""
    return root / Path(manifest if manifest is not None else "manifest.csv").expanduser()


def read_manifest(
    root: Path, manifest: Path, classes: list[str] | None = None
) -> tuple[list[str], list[Frame], list[str]]:
    """The classes, one entry per manifest row (`manifest` as `manifest_path` gives it) and
    each row's split ("" everywhere without a `split` column); every path must exist under
    `root`."""
    if not manifest.is_file():
        raise FerError(
            f"manifest: {manifest} does not exist (a relative manifest path is taken from the "
            f"root {root}); give a CSV with columns path,subject,label"
        )
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in reader.fieldnames or []]
            missing = [c for c in REQUIRED if c not in columns]
            if missing:
                raise FerError(
                    f"{manifest}: missing column {missing[0]!r} (has {columns}); the manifest "
                    "needs columns path,subject,label"
                )
            rows = [
                ({k.strip(): (v or "").strip() for k, v in row.items() if k}, reader.line_num)
                for row in reader
            ]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise FerError(
            f"{manifest}: not a UTF-8 CSV file ({type(exc).__name__}); save it as UTF-8 CSV"
        ) from None
    if not rows:
        raise FerError(f"{manifest}: has a header but no rows; list one image per row")
    for row, line in rows:
        _check_label(row["label"], f"{manifest}:{line}")
    names = sorted({row["label"] for row, _ in rows}) if classes is None else list(classes)
    lookup = {name: label for label, name in enumerate(names)}
    frames: list[Frame] = []
    splits: list[str] = []
    has_split = "split" in columns
    seen: set[str] = set()
    for row, line in rows:
        where = f"{manifest}:{line}"
        path = _relative_path(root, row["path"], where)
        if path in seen:
            raise FerError(f"{where}: path {path!r} listed twice; keep one row per image")
        seen.add(path)
        if not row["subject"]:
            raise FerError(f"{where}: empty subject; every image needs a subject id")
        if row["label"] not in lookup:
            raise FerError(f"{where}: unknown label {row['label']!r}; known classes are {names}")
        frame = _frame_number(row.get("frame", ""), where)
        frames.append((path, row["subject"], row.get("sequence", ""), frame, lookup[row["label"]]))
        if has_split and row["split"] not in SPLITS:
            raise FerError(
                f"{where}: split {row['split']!r} is not one of {', '.join(SPLITS)}; with a "
                "split column every row names its split"
            )
        splits.append(row["split"] if has_split else "")
    if has_split:
        for needed in ("train", "test"):
            if needed not in splits:
                raise FerError(
                    f"{manifest}: split column has no {needed!r} row; a fixed split needs "
                    "training and test images (val is optional)"
                )
    return names, frames, splits


def _check_label(label: str, where: str) -> None:
    if not label:
        raise FerError(f"{where}: empty label; every image needs its class name")
    if label.lower() in MISSING_LABELS:
        raise FerError(
            f"{where}: label {label!r} marks a missing value, not a class; give the image's "
            "class name or drop the row"
        )


def _relative_path(root: Path, text: str, where: str) -> str:
    if not text:
        raise FerError(f"{where}: empty path")
    path = Path(text)
    if path.is_absolute():
        try:
            path = path.relative_to(root)
        except ValueError:
            raise FerError(
                f"{where}: path {text!r} is outside root {root}; make it relative"
            ) from None
    posix = PurePosixPath(path.as_posix())
    if ".." in posix.parts:
        raise FerError(f"{where}: path {text!r} leaves the root; make it relative to {root}")
    if not (root / posix).is_file():
        raise FerError(f"{where}: image {root / posix} does not exist; fix the path or the root")
    return posix.as_posix()


def _frame_number(text: str, where: str) -> int:
    if not text:
        return 0
    try:
        return int(text)
    except ValueError:
        raise FerError(f"{where}: frame {text!r} is not an integer") from None
