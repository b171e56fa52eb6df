"""Face crops: MTCNN once per dataset, cached and fingerprinted, never inside a training job.

Why cached: detection costs ~60-100 ms per frame on a CPU core and gives the same answer every
time, while a training unit reads all images every epoch. So `prepare_faces` detects the face
in each indexed frame (facenet-pytorch MTCNN, batched over same-size frames), crops a square
box with a margin, resizes it to `crop_size` and stores every crop in one uint8 tensor
(`faces.pt`) with the labels, folds and subjects, plus a human-readable `faces.json`; a large
dataset's crops go to the on-disk store `crops/` instead (`fer_core.data.store`), read by
index, so a unit's memory does not grow with the dataset (`storage` of `prepare_faces`). Its
fingerprint covers the data (paths, bytes, labels, folds) and the crop settings: a match means
reuse, any change means recompute. A frame without a detected face falls back to a centre
square crop and is counted and listed, never silently dropped (docs/METHOD.md D-7).

`faces.pt` keys: images (uint8 N x 3 x S x S), labels / folds (int64 N), subjects, image_ids
(= index paths), splits (the index's `split`: "" or train / val / test), classes (list[str]),
dataset (str), fingerprint (str), boxes (float32 N x 4:
the crop box x0, y0, x1, y1 in source pixels), detected (bool N), probs (float32 N, NaN when
not detected), targets (float32 N x C soft targets where labels are distributions, FERPlus
`probability`; else None). Loads with `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, TypedDict, cast

import numpy as np
import torch
from PIL import Image

from fer_core.data.index import DatasetIndex, dataset_fingerprint
from fer_core.data.store import STORE_DIR, CropStore, ShardRows, read_side_data, write_store
from fer_core.data.wild import face_source
from fer_core.errors import FerError
from fer_core.io import atomic_torch_save, atomic_write_text
from fer_core.progressbar import ProgressBar

DETECTORS = ("mtcnn", "center", "box")
STORAGES = ("auto", "memory", "store")
STORE_MIN_BYTES = 1 << 30  # `auto` storage: crops from this size on go to the on-disk store
FORMAT = 1
CROP_METHOD = 1  # bump when the cropping code changes what it produces
PT_NAME, JSON_NAME = "faces.pt", "faces.json"
RERUN = "run `python -m orchestrator data faces`"
Box = tuple[int, int, int, int]
Hit = tuple[Sequence[float], float]  # a detected face: (x0, y0, x1, y1) box, probability


class CropSettings(TypedDict):
    """How crops were made: part of the cache's fingerprint and of `faces.json`."""

    crop_size: int
    margin: float
    detector: str


class FacesBlob(TypedDict):
    """`faces.pt` (see the module docstring), as `prepare_faces` writes it."""

    format: int
    storage: str  # "memory": the crops are `images`; "store": `crops/` (empty `images`)
    images: torch.Tensor
    labels: torch.Tensor
    folds: torch.Tensor
    subjects: list[str]
    image_ids: list[str]
    splits: list[str]
    classes: list[str]
    dataset: str
    fingerprint: str
    boxes: torch.Tensor
    detected: torch.Tensor
    probs: torch.Tensor
    targets: torch.Tensor | None


class FacesMeta(TypedDict):
    """`faces.json`: the cache's seal and its human-readable summary (keys in file order)."""

    format: int
    fingerprint: str
    dataset: str
    dataset_fingerprint: str
    crop_size: int
    margin: float
    detector: str
    crop_method: int
    storage: str
    n: int
    detected: int
    fallback: int
    fallback_images: list[str]
    pt_sha256: str
    pt_bytes: int
    seconds: float


class FaceDetector(Protocol):
    """What is used of facenet-pytorch's MTCNN (which ships no types): per frame, the
    face boxes (K x 4, largest first) and probabilities (K), or None where none was found."""

    def detect(
        self, img: list[Image.Image]
    ) -> tuple[Sequence[np.ndarray | None], Sequence[np.ndarray | None]]: ...


@dataclass(frozen=True)
class FacesReport:
    """What `prepare_faces` did. On reuse, `detected` / `fallback` are the cached counts and
    `reused` is the number of crops taken from the cache (nothing was detected)."""

    detected: int
    fallback: int
    reused: int
    path: str
    fingerprint: str
    total: int = 0
    detector: str = "mtcnn"
    fallback_images: tuple[str, ...] = ()


@dataclass
class FaceSet:
    """All face crops of one dataset, in index order, ready to batch onto a device."""

    images: torch.Tensor | CropStore  # uint8 N x 3 x S x S; `images[rows]` is a tensor
    labels: torch.Tensor  # int64 N, 0-based
    folds: torch.Tensor  # int64 N, 1-based
    subjects: list[str]
    image_ids: list[str]
    classes: list[str]
    dataset: str
    fingerprint: str = ""
    detected: torch.Tensor | None = None  # bool N; False = centre-crop fallback
    targets: torch.Tensor | None = None  # float32 N x C soft targets (FERPlus probability)
    # Per crop, parallel to `labels`: "" for a k-fold dataset, else train / val / test (the
    # dataset's own fixed split; its folds are 0). Left out, every crop is "".
    splits: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.splits:
            self.splits = [""] * len(self)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @classmethod
    def load(cls, out_dir: str | Path) -> FaceSet:
        """Load `out_dir/faces.pt`, checking it against `faces.json` when that is present."""
        path = Path(out_dir) / PT_NAME
        if not path.is_file():
            raise FerError(f"faces: {path} does not exist; {RERUN} first")
        data = path.read_bytes()
        meta = _read_meta(Path(out_dir))
        if meta and meta.get("pt_sha256") not in (None, hashlib.sha256(data).hexdigest()):
            raise FerError(f"faces: {path} does not match its faces.json (corrupt?); {RERUN}")
        try:
            blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            store = blob.get("storage") == "store"
            faces = cls(
                images=CropStore(Path(out_dir) / STORE_DIR) if store else blob["images"],
                labels=blob["labels"],
                folds=blob["folds"],
                subjects=list(blob["subjects"]),
                image_ids=list(blob["image_ids"]),
                classes=list(blob["classes"]),
                dataset=str(blob["dataset"]),
                fingerprint=str(blob.get("fingerprint", "")),
                detected=blob.get("detected"),
                splits=list(blob.get("splits") or ()),  # a cache older than splits: ""
                targets=blob.get("targets"),
            )
        except FerError:
            raise
        except Exception as exc:  # unpickling and missing keys fail in many ways
            raise FerError(f"faces: {path} is corrupt ({type(exc).__name__}); {RERUN}") from None
        faces._check(path)
        return faces

    def subset(self, selector: torch.Tensor | Sequence[int] | slice) -> FaceSet:
        """A new FaceSet of the crops picked by a bool mask, an index tensor/list or a slice."""
        if isinstance(selector, slice):
            idx = torch.arange(len(self))[selector]
        else:
            idx = torch.as_tensor(selector)
            if idx.dtype == torch.bool:
                if idx.shape != (len(self),):
                    raise FerError(
                        f"subset: mask has shape {tuple(idx.shape)}, need ({len(self)},)"
                    )
                idx = idx.nonzero().flatten()
            idx = idx.long().flatten()
        picks = idx.tolist()
        return replace(
            self,
            images=self.images[idx],
            labels=self.labels[idx],
            folds=self.folds[idx],
            subjects=[self.subjects[i] for i in picks],
            image_ids=[self.image_ids[i] for i in picks],
            splits=[self.splits[i] for i in picks],
            detected=None if self.detected is None else self.detected[idx],
            targets=None if self.targets is None else self.targets[idx],
        )

    def fold_mask(self, folds: int | Iterable[int]) -> torch.Tensor:
        """Bool mask of the crops whose fold is in `folds`."""
        wanted = torch.tensor([folds] if isinstance(folds, int) else list(folds), dtype=torch.long)
        return torch.isin(self.folds, wanted)

    def _check(self, path: Path) -> None:
        n = len(self)
        images = self.images
        shape = tuple(images.shape)
        ok = (
            images.dtype == torch.uint8
            and len(shape) == 4
            and shape[0] == n
            and shape[1] == 3
            and shape[2] == shape[3]
            and (not isinstance(images, CropStore) or images.fingerprint == self.fingerprint)
            and self.folds.shape == (n,)
            and self.labels.shape == (n,)
            and len(self.subjects) == len(self.image_ids) == len(self.splits) == n
            and (n == 0 or int(self.labels.max()) < len(self.classes))
            and (self.targets is None or self.targets.shape == (n, len(self.classes)))
        )
        if not ok:
            raise FerError(f"faces: {path} has inconsistent contents; {RERUN}")


def default_faces_dir(root: Path, crop_size: int) -> Path:
    """Where a face cache goes unless told: `ROOT-faces-SIZE`, beside the raw root and never
    inside it, so the raw tree holds only what its owner put there (and may be read-only)."""
    root = Path(root).expanduser().resolve()
    return root.parent / f"{root.name}-faces-{crop_size}"


def prepare_faces(
    index: DatasetIndex,
    out_dir: str | Path,
    crop_size: int,
    detector: str = "mtcnn",
    batch_size: int = 16,
    margin: float = 0.2,
    *,
    device: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    storage: str = "auto",
    shard_rows: int | None = None,
) -> FacesReport:
    """Crop the face of every indexed frame into `out_dir/faces.pt` (+ `faces.json`).

    `margin` widens the detected box's longer side by that fraction (0.2 = 10 % each side,
    D-16) before squaring and clamping to the frame. `detector="center"` skips MTCNN and
    takes the centre square of every frame: a declared option for synthetic data and quick runs, and
    the whole image where it is the face already (RAF-DB aligned, FER2013); `detector="box"`
    crops the face box the dataset gives (AffectNet's CSV).
    `device` runs MTCNN there (default: cuda when available). `progress(done, total)` is
    called after each batch (default: a `fer_core.progressbar.ProgressBar` on stdout).
    `storage` says where the crops go: `memory` (inside faces.pt, loaded whole), `store` (the
    on-disk shards of `fer_core.data.store`, `shard_rows` crops each, default about 256 MB;
    read by index, resumed shard by shard if preparation is killed) or `auto`: the store
    from `STORE_MIN_BYTES` of crops on. Reuses the cache when the fingerprint matches; writes
    atomically (the shards, faces.pt, then faces.json last as the seal).
    """
    _check_args(crop_size, detector, batch_size, margin)
    if storage not in STORAGES:
        raise FerError(f"storage: {storage!r} is not one of {', '.join(STORAGES)}")
    out_dir = Path(out_dir)
    settings: CropSettings = {
        "crop_size": int(crop_size),
        "margin": float(margin),
        "detector": detector,
    }
    data_fp = dataset_fingerprint(index)
    fingerprint = faces_fingerprint(data_fp, settings)
    meta = _read_meta(out_dir)
    pt_path = out_dir / PT_NAME
    if (
        meta
        and meta.get("fingerprint") == fingerprint
        and storage in ("auto", meta.get("storage", "memory"))
        and pt_path.is_file()
        and pt_path.stat().st_size == meta.get("pt_bytes")
        and (meta.get("storage") != "store" or _store_ok(out_dir, fingerprint))
    ):
        return FacesReport(
            detected=int(meta["detected"]),
            fallback=int(meta["fallback"]),
            reused=int(meta["n"]),
            path=str(pt_path),
            fingerprint=fingerprint,
            total=int(meta["n"]),
            detector=detector,
            fallback_images=tuple(meta.get("fallback_images", ())),
        )

    started = time.time()
    n = len(index.records)
    if storage == "auto":
        storage = "store" if n * 3 * crop_size * crop_size >= STORE_MIN_BYTES else "memory"
    bar = None
    if progress is None:
        progress = bar = ProgressBar(f"faces ({detector})")
    mtcnn = _load_mtcnn(device) if detector == "mtcnn" else None

    def crop_rows(start: int, stop: int, tick: Callable[[int], None]) -> ShardRows:
        return _crop_rows(
            index, range(start, stop), mtcnn, detector, crop_size, margin, batch_size, tick
        )

    if storage == "store":
        write_store(out_dir / STORE_DIR, n, crop_size, fingerprint, crop_rows, progress, shard_rows)
        images = torch.zeros((0, 3, crop_size, crop_size), dtype=torch.uint8)
        boxes, detected, probs = read_side_data(out_dir / STORE_DIR, n)
    else:
        done = [0]

        def tick(k: int) -> None:
            done[0] += k
            progress(done[0], n)

        rows = crop_rows(0, n, tick)
        images, boxes = torch.from_numpy(rows.images), torch.from_numpy(rows.boxes)
        detected, probs = torch.from_numpy(rows.detected), torch.from_numpy(rows.probs)
    if bar is not None:
        bar.close()

    records = index.records
    fallback = [records[i].path for i in range(n) if not detected[i]] if mtcnn else []
    blob: FacesBlob = {
        "format": FORMAT,
        "storage": storage,
        "images": images,
        "labels": torch.tensor([r.label for r in records], dtype=torch.long),
        "folds": torch.tensor([r.fold for r in records], dtype=torch.long),
        "subjects": [r.subject for r in records],
        "image_ids": [r.image_id for r in records],
        "splits": [r.split for r in records],
        "classes": list(index.classes),
        "dataset": index.dataset,
        "fingerprint": fingerprint,
        "boxes": boxes,
        "detected": detected,
        "probs": probs,
        "targets": (
            torch.tensor([index.targets[r.path] for r in records], dtype=torch.float32)
            if index.targets
            else None
        ),
    }
    sha = atomic_torch_save(blob, pt_path)
    n_detected = int(detected.sum())
    meta = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "dataset": index.dataset,
        "dataset_fingerprint": data_fp,
        **settings,
        "crop_method": CROP_METHOD,
        "storage": storage,
        "n": n,
        "detected": n_detected,
        "fallback": len(fallback),
        "fallback_images": fallback,
        "pt_sha256": sha,
        "pt_bytes": pt_path.stat().st_size,
        "seconds": round(time.time() - started, 3),
    }
    atomic_write_text(out_dir / JSON_NAME, json.dumps(meta, indent=1) + "\n")
    return FacesReport(
        detected=n_detected,
        fallback=len(fallback),
        reused=0,
        path=str(pt_path),
        fingerprint=fingerprint,
        total=n,
        detector=detector,
        fallback_images=tuple(fallback),
    )


def _crop_rows(
    index: DatasetIndex,
    rows: range,
    mtcnn: FaceDetector | None,
    detector: str,
    crop_size: int,
    margin: float,
    batch_size: int,
    tick: Callable[[int], None],
) -> ShardRows:
    """The crops and side data of index rows `rows`; `tick(k)` after each batch of k. Frames
    come from the dataset's face source (an image file, or a FER2013 row's pixels); without
    MTCNN, batches need no equal frame sizes, so no file is opened to group them."""
    k = len(rows)
    part = ShardRows(
        images=np.zeros((k, 3, crop_size, crop_size), dtype=np.uint8),
        boxes=np.zeros((k, 4), dtype=np.float32),
        detected=np.zeros(k, dtype=bool),
        probs=np.full(k, math.nan, dtype=np.float32),
    )
    source = face_source(index.dataset, Path(index.root))
    batches = (
        _batches_by_size(index, batch_size, rows)
        if mtcnn is not None
        else [
            list(range(k, min(k + batch_size, rows.stop)))
            for k in range(rows.start, rows.stop, batch_size)
        ]
    )
    for batch in batches:
        frames = [source.frame(index.records[i].path) for i in batch]
        if mtcnn is not None:
            found = _detect(mtcnn, frames)
        else:
            found = [_given(source.box(index.records[i].path), detector) for i in batch]
        for i, frame, hit in zip(batch, frames, found, strict=True):
            j = i - rows.start
            if hit is not None:
                part.detected[j], part.probs[j] = True, hit[1]
            crop, box = crop_frame(frame, hit, crop_size, margin)
            part.images[j], part.boxes[j] = crop.numpy(), box
        tick(len(batch))
    return part


def _store_ok(out_dir: Path, fingerprint: str) -> bool:
    """A complete crop store of these crops is in `out_dir`."""
    try:
        return CropStore(out_dir / STORE_DIR).fingerprint == fingerprint
    except FerError:
        return False


def crop_frame(
    frame: Image.Image, hit: Hit | None, crop_size: int, margin: float
) -> tuple[torch.Tensor, Box]:
    """One frame's crop (uint8 3 x S x S) and its box: the square around the detected face
    `hit`, or the centre square when there is none. Inference crops with this too, so a
    model sees the same crop of an image as it did in training."""
    width, height = frame.size
    box = (
        square_box(hit[0], width, height, margin) if hit is not None else centre_box(width, height)
    )
    crop = frame.resize((crop_size, crop_size), Image.Resampling.BILINEAR, box=box)
    return torch.from_numpy(np.asarray(crop).copy()).permute(2, 0, 1), box


def faces_fingerprint(data_fingerprint: str, settings: CropSettings) -> str:
    """sha256 of the dataset fingerprint, the crop settings and the crop method version."""
    payload = {"data": data_fingerprint, "crop_method": CROP_METHOD, **settings}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def square_box(box: Sequence[float], width: int, height: int, margin: float) -> Box:
    """A square around a detected (x0, y0, x1, y1) box: side = longer side x (1 + margin),
    same centre, shifted (not shrunk) to stay inside the frame; shrunk only when the frame
    itself is smaller than the square."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = round(min(max(x1 - x0, y1 - y0) * (1 + margin), width, height))
    side = max(side, 1)
    left = round((x0 + x1) / 2 - side / 2)
    top = round((y0 + y1) / 2 - side / 2)
    left = min(max(left, 0), width - side)
    top = min(max(top, 0), height - side)
    return (left, top, left + side, top + side)


def centre_box(width: int, height: int) -> Box:
    """The largest centred square: the fallback when no face is found."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return (left, top, left + side, top + side)


def _check_args(crop_size: int, detector: str, batch_size: int, margin: float) -> None:
    if detector not in DETECTORS:
        raise FerError(f"detector: {detector!r} is not one of {', '.join(DETECTORS)}")
    if isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size < 8:
        raise FerError(f"crop_size: {crop_size!r} must be an integer >= 8")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise FerError(f"batch_size: {batch_size!r} must be an integer >= 1")
    if not isinstance(margin, int | float) or not math.isfinite(margin) or margin < 0:
        raise FerError(f"margin: {margin!r} must be a number >= 0")


def _batches_by_size(index: DatasetIndex, batch_size: int, rows: range) -> list[list[int]]:
    """Indices `rows` grouped by frame size (MTCNN batches need equal sizes), then chunked."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i in rows:
        path = index.path_of(index.records[i])
        try:
            with Image.open(path) as image:
                size = image.size
        except (OSError, ValueError) as exc:
            raise FerError(f"{path}: cannot open image ({exc}); rebuild the index") from None
        groups.setdefault(size, []).append(i)
    return [g[k : k + batch_size] for g in groups.values() for k in range(0, len(g), batch_size)]


def _given(box: Box | None, detector: str) -> Hit | None:
    """A dataset's own face box as a hit (no detector probability), when cropping by box."""
    if detector != "box":
        return None
    if box is None:
        raise FerError("detector: box needs a dataset that gives face boxes (affectnet)")
    return (box, math.nan)


def open_rgb(path: Path, hint: str = "") -> Image.Image:
    """An image file as RGB; an unreadable one is a one-line FerError (plus `hint`)."""
    try:
        with Image.open(path) as image:  # Any under Python 3.10 (PIL's `Self`)
            rgb: Image.Image = image.convert("RGB")
            return rgb
    except (OSError, ValueError) as exc:
        raise FerError(f"{path}: cannot read image ({exc}){hint}") from None


def _load_mtcnn(device: str | None) -> FaceDetector:
    """facenet-pytorch's MTCNN; its weights ship inside the package (works offline)."""
    try:
        from facenet_pytorch import MTCNN
    except ImportError as exc:
        raise FerError(
            f"detector: mtcnn needs facenet-pytorch ({exc}); install it "
            "(pip install --no-deps facenet-pytorch==2.5.3) or use detector center"
        ) from None
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    mtcnn: FaceDetector = MTCNN(device=device, select_largest=True, keep_all=False)
    return mtcnn


def _detect(mtcnn: FaceDetector, frames: list[Image.Image]) -> list[Hit | None]:
    """The largest face box and its probability per frame, or None where none was found."""
    boxes, probs = mtcnn.detect(frames)
    found: list[Hit | None] = []
    for frame_boxes, frame_probs in zip(boxes, probs, strict=True):
        if frame_boxes is None or frame_probs is None or len(frame_boxes) == 0:
            found.append(None)
        else:
            found.append((frame_boxes[0], float(frame_probs[0])))
    return found


def _read_meta(out_dir: Path) -> FacesMeta | None:
    """`faces.json` if it is a JSON object; its values are checked where they are used."""
    try:
        meta = json.loads((out_dir / JSON_NAME).read_text())
    except (OSError, ValueError):
        return None
    return cast(FacesMeta, meta) if isinstance(meta, dict) else None
