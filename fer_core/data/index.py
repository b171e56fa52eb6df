"""The dataset index: one row per used image, with its label and subject-independent fold.

Everything downstream (face crops, training units, results) starts from this table, so it is
built once from the raw layout, checked (labels parse, sequences are not empty, images open),
and written as Parquet. `dataset_fingerprint` hashes the paths, file contents and labels, so a
changed image or label changes every id derived from the data.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TypedDict

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from fer_core.data import ckplus, oulu, wild
from fer_core.data.folds import FOLD_RULES, subject_folds
from fer_core.data.layout import Frame
from fer_core.data.manifest import manifest_path, read_manifest
from fer_core.errors import FerError
from fer_core.io import atomic_write_bytes, sha256_file
from fer_core.progressbar import ProgressBar

DATASETS = ("ckplus", "oulu", "manifest", *wild.KINDS)
LAST_FRAMES = 3  # the paper keeps the last three frames (the apex) of each sequence
FORMAT = 1
_META_KEY = b"fer_core.index"

_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("path", pa.string()),
    ("subject", pa.string()),
    ("sequence", pa.string()),
    ("frame", pa.int64()),
    ("label", pa.int64()),
    ("label_name", pa.string()),
    ("fold", pa.int64()),
    ("split", pa.string()),
]
SCHEMA = pa.schema(_COLUMNS)


class IndexMeta(TypedDict):
    """The index's Parquet schema metadata (key `fer_core.index`): what rebuilds the index
    beside its rows."""

    format: int
    dataset: str
    root: str
    classes: list[str]
    n_folds: int
    fold_rule: str  # absent from indexes written before it existed: interleaved
    options: dict[str, str]
    skipped: dict[str, int]
    targets: dict[str, list[float]]


@dataclass(frozen=True)
class ImageRecord:
    """One used image. `path` is relative to the dataset root (POSIX); `label` is 0-based,
    `fold` 1-based. The path doubles as the image id: unique and stable across machines.
    `split` is "" for a k-fold dataset, else train | val | test (the dataset's own split,
    with `fold` 0); a FER2013 face has no file and its path is its id (`fer0000000`)."""

    path: str
    subject: str
    sequence: str
    frame: int
    label: int
    label_name: str
    fold: int
    split: str = ""

    @property
    def image_id(self) -> str:
        return self.path


@dataclass
class DatasetIndex:
    """The images of one dataset with their classes and folds; `root` is absolute.
    `options` are the dataset kind's (`fer_core.data.wild.OPTIONS`); `skipped` counts the
    rows the dataset itself marks as no expression, by reason; `targets` the soft target of
    each image where labels are distributions (FERPlus `probability`), else empty."""

    dataset: str
    root: str
    classes: list[str]
    records: list[ImageRecord] = field(default_factory=list)
    n_folds: int = 10
    fold_rule: str = FOLD_RULES[0]
    options: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    targets: dict[str, list[float]] = field(default_factory=dict)  # image id -> soft target

    def __len__(self) -> int:
        return len(self.records)

    @property
    def subjects(self) -> list[str]:
        return sorted({r.subject for r in self.records})

    def path_of(self, record: ImageRecord) -> Path:
        """The absolute path of a record's image file."""
        return Path(self.root) / record.path

    def class_counts(self) -> dict[str, int]:
        counts = Counter(r.label for r in self.records)
        return {name: counts.get(label, 0) for label, name in enumerate(self.classes)}

    def to_table(self) -> pa.Table:
        """The records as a pyarrow Table; dataset, root, classes, n_folds and fold_rule ride
        along in the schema metadata so the Parquet file alone rebuilds the index."""
        columns = {f.name: [getattr(r, f.name) for r in self.records] for f in fields(ImageRecord)}
        meta: IndexMeta = {
            "format": FORMAT,
            "dataset": self.dataset,
            "root": self.root,
            "classes": self.classes,
            "n_folds": self.n_folds,
            "fold_rule": self.fold_rule,
            "options": self.options,
            "skipped": self.skipped,
            "targets": self.targets,
        }
        schema = SCHEMA.with_metadata({_META_KEY: json.dumps(meta).encode()})
        return pa.Table.from_pydict(columns, schema=schema)

    def write(self, path: str | Path) -> None:
        """Write the index as Parquet, atomically (temp file + rename)."""
        sink = pa.BufferOutputStream()
        pq.write_table(self.to_table(), sink)
        atomic_write_bytes(Path(path), sink.getvalue().to_pybytes())

    @classmethod
    def read(cls, path: str | Path, root: str | Path | None = None) -> DatasetIndex:
        """Read an index written by `write`; `root` overrides the stored dataset root (the
        data moved, e.g. onto a cluster's scratch disk)."""
        path = Path(path)
        if not path.is_file():
            raise FerError(
                f"index: {path} does not exist; build it with `python -m orchestrator data index`"
            )
        try:
            table = pq.read_table(path)
            meta = json.loads((table.schema.metadata or {})[_META_KEY])
            # An index written before the split column reads as a k-fold one ("").
            names = [f.name for f in SCHEMA if f.name in table.column_names]
            rows = table.select(names).to_pylist()
        except (pa.ArrowException, OSError, KeyError, ValueError) as exc:
            raise FerError(f"index: {path} is not a dataset index ({exc}); rebuild it") from None
        records = [ImageRecord(**row) for row in rows]
        return cls(
            dataset=meta["dataset"],
            root=str(Path(root).resolve()) if root is not None else meta["root"],
            classes=list(meta["classes"]),
            records=records,
            n_folds=int(meta["n_folds"]),
            fold_rule=str(meta.get("fold_rule", FOLD_RULES[0])),
            options=dict(meta.get("options", {})),
            skipped=dict(meta.get("skipped", {})),
            targets=dict(meta.get("targets", {})),
        )


def detect_dataset(root: str | Path) -> str:
    """`ckplus` or `oulu` from the folder layout under `root`, else a FerError."""
    root = _existing_root(root)
    if ckplus.looks_like_ckplus(root):
        return "ckplus"
    if oulu.looks_like_oulu(root):
        return "oulu"
    raise FerError(
        f"root: {root} is neither CK+ (cohn-kanade-images/ + Emotion/) nor Oulu-CASIA "
        f"({oulu.BASE_DIR}/); for other data write a manifest CSV (path,subject,label)"
    )


def build_index(
    dataset: str,
    root: str | Path,
    manifest: str | Path | None = None,
    n_folds: int = 10,
    *,
    classes: list[str] | None = None,
    last_frames: int = LAST_FRAMES,
    verify: bool = True,
    fold_rule: str = FOLD_RULES[0],
    options: Mapping[str, object] | None = None,
) -> DatasetIndex:
    """Scan a raw dataset folder into a `DatasetIndex`.

    `dataset` is `ckplus`, `oulu`, `manifest` or `auto` (CK+ or Oulu from the layout). For
    CK+ and Oulu the last `last_frames` frames of each labelled sequence are kept; a manifest
    lists its images itself (`manifest` relative to `root` unless absolute, default
    `ROOT/manifest.csv`). `verify` opens every kept image so a truncated file fails here,
    naming it, instead of mid-training. `fold_rule` says how sorted subjects become folds
    (`folds.subject_folds`). A fixed-split kind
    (`fer_core.data.wild`: rafdb, fer2013, ferplus, affectnet) reads its own list files,
    with its `options`; a listed image file that is missing fails even without `verify`.
    """
    root = _existing_root(root)
    if dataset == "auto":
        dataset = detect_dataset(root)
    if dataset in wild.KINDS:
        return _fixed_index(dataset, root, wild.resolve_options(dataset, options, dataset), verify)
    splits: list[str] = []
    if dataset == "ckplus":
        names, frames = (
            list(ckplus.CLASSES),
            _last_frames(root, ckplus.scan_ckplus(root), last_frames),
        )
    elif dataset == "oulu":
        names, frames = list(oulu.CLASSES), _last_frames(root, oulu.scan_oulu(root), last_frames)
    elif dataset == "manifest":
        names, frames, splits = read_manifest(root, manifest_path(root, manifest), classes)
    else:
        raise FerError(f"dataset: {dataset!r} is not one of {', '.join(DATASETS)} or auto")
    if classes is not None and dataset != "manifest" and list(classes) != names:
        raise FerError(f"classes: {classes} differ from {dataset}'s fixed classes {names}")
    if verify:
        bar = ProgressBar(f"index {dataset}")
        try:
            for done, (relative, *_) in enumerate(frames, start=1):
                check_image(root / relative)
                bar(done, len(frames))
        finally:
            bar.close()  # a bad image's error starts on a line of its own
    if any(splits):  # a fixed split of its own: no subject folds
        records = [
            ImageRecord(path, subject, sequence, frame, label, names[label], 0, split)
            for (path, subject, sequence, frame, label), split in zip(frames, splits, strict=True)
        ]
    else:
        folds = subject_folds((f[1] for f in frames), n_folds, fold_rule)
        records = [
            ImageRecord(path, subject, sequence, frame, label, names[label], folds[subject])
            for path, subject, sequence, frame, label in frames
        ]
    return DatasetIndex(dataset, str(root), names, records, n_folds, fold_rule)


def _fixed_index(dataset: str, root: Path, options: dict[str, str], verify: bool) -> DatasetIndex:
    """A fixed-split dataset's index: its list's rows, each image its own subject, fold 0."""
    listing = wild.scan(dataset, root, options)
    if listing.files:
        for path, _, _ in listing.rows:
            if not (root / path).is_file():
                raise FerError(f"{root / path}: listed by the dataset but missing; restore it")
    if verify:
        source = wild.face_source(dataset, root)
        bar = ProgressBar(f"index {dataset}")
        try:
            for done, (path, _, _) in enumerate(listing.rows, start=1):
                source.check(path)
                bar(done, len(listing.rows))
        finally:
            bar.close()
    names = listing.classes
    records = [
        ImageRecord(path, path, "", 0, label, names[label], 0, split)
        for path, label, split in listing.rows
    ]
    return DatasetIndex(
        dataset,
        str(root),
        names,
        records,
        n_folds=0,
        options=options,
        skipped=dict(listing.skipped),
        targets=listing.targets,
    )


def check_image(path: Path) -> None:
    """The image decodes: the header parses, (PNG) every chunk checksum holds, the pixel data
    decompresses in full, and (JPEG) the end-of-image marker is present, so truncated or
    damaged copies are caught. `verify` alone reads no pixels and leaves the file unusable,
    hence a second open to `load` it."""
    try:
        with Image.open(path) as image:
            image.verify()
            kind = image.format
        with Image.open(path) as image:
            image.load()
    except Exception as exc:  # PIL raises many types for bad files
        raise FerError(f"{path}: not a readable image ({exc}); re-copy or remove it") from None
    if kind == "JPEG":
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - 64))
            if b"\xff\xd9" not in handle.read():
                raise FerError(f"{path}: truncated JPEG (no end-of-image marker); re-copy it")


def dataset_fingerprint(
    index: DatasetIndex, file_digest: Callable[[Path], str] = sha256_file
) -> str:
    """sha256 over the classes and, per image (in path order), its path, the sha256 of its
    bytes (from `file_digest`: a cache may answer), label, subject, fold and (a fixed split's
    only, so a k-fold dataset keeps its fingerprint) split. Independent of where the data
    lives (root) and of every file the index does not use. What an image's content is,
    is its dataset's (`fer_core.data.wild.FaceSource`): a FER2013 face's pixels, an
    AffectNet image's bytes and face box."""
    digest = hashlib.sha256()
    head: dict[str, object] = {"dataset": index.dataset, "classes": index.classes}
    if index.options:  # an older index's fingerprint stays as it was
        head["options"] = index.options
    digest.update(json.dumps(head).encode())
    source = wild.face_source(index.dataset, Path(index.root))
    for record in sorted(index.records, key=lambda r: r.path):
        content = source.content(record.path, file_digest)
        line = [record.path, content, record.label, record.subject, record.fold]
        if record.split:
            line.append(record.split)
        if index.targets:
            line.append(index.targets[record.path])
        digest.update((json.dumps(line) + "\n").encode())
    return digest.hexdigest()


def _existing_root(root: str | Path) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FerError(f"root: {path} is not an existing folder; give the dataset's root folder")
    return path.resolve()


def _last_frames(root: Path, frames: list[Frame], keep: int) -> list[Frame]:
    if keep < 1:
        raise FerError(f"last_frames: {keep} must be >= 1")
    sequences: dict[tuple[str, str], list[Frame]] = {}
    for frame in frames:
        sequences.setdefault((frame[1], frame[2]), []).append(frame)
    kept: list[Frame] = []
    for items in sequences.values():
        items.sort(key=lambda f: f[3])
        if len(items) < keep:
            folder = (root / items[0][0]).parent
            raise FerError(
                f"{folder}: sequence has {len(items)} frame(s) but the protocol keeps the last "
                f"{keep}; restore its frames or lower last_frames"
            )
        kept.extend(items[-keep:])
    return kept
