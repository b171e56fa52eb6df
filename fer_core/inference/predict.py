"""Predicting expressions on image files with trained units: same crop, same scoring path.

Each image is cropped as the unit's training data was (`card["crop"]`: MTCNN's largest face,
squared with the same margin, resized to the same crop size, by `fer_core.data.faces.
crop_frame`; a unit trained on a dataset's own face boxes, detector `box`, meets new images
that have none, and MTCNN's box stands in for it), then scored by `fer_core.evaluate.
predict`, the function that produced the unit's `predictions` rows. An image in which
MTCNN finds no face is reported as such and not scored, unless `fallback_center` asks for
the centre crop (what the training cache does). Several units (the folds of one model) are
averaged: the ensemble's probabilities are the mean of the folds' probabilities. A video
file gives one row per frame (decoded by PyAV).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

import torch
from PIL import Image

from fer_core.checkpoints import load_best
from fer_core.data.faces import FaceDetector, Hit, _detect, _load_mtcnn, crop_frame, open_rgb
from fer_core.errors import FerError
from fer_core.evaluate import predict
from fer_core.inference.card import ModelCard, read_card
from fer_core.models import FerNet, build_model

if TYPE_CHECKING:
    from av.container import InputContainer

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
CHUNK = 64  # images read, cropped and scored at a time (memory stays flat on large inputs)
DETECT_BATCH = 16  # frames per MTCNN call, as the training cache
# The training crops' detectors for which new images are cropped on MTCNN's box: its own, and
# a dataset's boxes (AffectNet's CSV), which a new image lacks; `center` takes the centre.
DETECTED_BY_MTCNN = ("mtcnn", "box")
# What a user should know of how new images are cropped, by the training crops' detector.
CROP_NOTES = {
    "box": "the model was trained on the dataset's face boxes; new images have none, so they "
    "are cropped on MTCNN's box (same margin and crop size)",
    "center": "the model was trained on images that are the face already (detector: center); "
    "each image's centre square is scored as it is: give face crops, not whole photos",
}
# Card keys that must agree between the units of an ensemble.
SAME = ("backbone", "classes", "input_size", "crop", "normalisation", "dataset")


class FaceStatus(TypedDict):
    """The face columns of a prediction row (in row order)."""

    face: Literal["detected", "center", "none"]
    face_probability: float  # MTCNN's; NaN without a detection
    box_x0: float  # the crop box in image pixels (NaN: no face, not scored)
    box_y0: float
    box_x1: float
    box_y1: float


@dataclass(frozen=True)
class Frame:
    """One picture to score: a still image, or frame `index` of a video (`time` seconds in)."""

    source: Path
    index: int | None
    time: float | None
    image: Image.Image


@dataclass
class LoadedUnit:
    """A unit's model in eval mode on its device, with its card."""

    model: FerNet
    card: ModelCard


def load_unit(work_dir: Path, device: torch.device) -> LoadedUnit:
    """The model of `work_dir/best.pt` (its sha256 checked), described by `best.json`."""
    card = read_card(work_dir)
    model = build_model(card["backbone"], len(card["classes"]), weights="none")
    load_best(model, Path(work_dir))
    return LoadedUnit(model.to(device).eval(), card)


def load_units(work_dirs: Sequence[Path], device: str = "auto") -> list[LoadedUnit]:
    """Load several units (one model's folds) onto `device` (`auto`: CUDA when present);
    they must describe the same model."""
    from fer_core.distributed import resolve_device
    from fer_core.ranks import Ranks

    units = [load_unit(Path(d), resolve_device(device, Ranks())) for d in work_dirs]
    first: Mapping[str, object] = units[0].card if units else {}
    for unit in units[1:]:
        card: Mapping[str, object] = unit.card
        for key in SAME:
            if card[key] != first[key]:
                raise FerError(
                    f"units {units[0].card['unit_id']} and {unit.card['unit_id']} differ in "
                    f"{key}; an ensemble averages folds of one model only"
                )
    return units


def input_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The files named, and the images and videos under the folders named (recursively,
    sorted)."""
    suffixes = IMAGE_SUFFIXES + VIDEO_SUFFIXES
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
            )
        elif path.is_file():
            files.append(path)
        else:
            raise FerError(f"{path}: no such image file or folder")
    if not files:
        raise FerError(f"no image or video files in {', '.join(str(i) for i in inputs)}")
    return files


def frames_of(files: Iterable[Path]) -> Iterator[Frame]:
    """Every picture of `files` in order: each image once, each video frame by frame."""
    for path in files:
        if path.suffix.lower() in VIDEO_SUFFIXES:
            yield from _video_frames(path)
        else:
            yield Frame(path, None, None, open_rgb(path))


def count_frames(files: Iterable[Path]) -> int | None:
    """How many pictures `frames_of` will yield, None when a video does not say (progress)."""
    total = 0
    for path in files:
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            total += 1
            continue
        with _open_video(path) as container:
            frames = container.streams.video[0].frames
        if not frames:
            return None
        total += frames
    return total


def predict_files(
    files: Sequence[Path],
    units: Sequence[LoadedUnit],
    fallback_center: bool = False,
    batch_size: int = 32,
    progress: Callable[[int, int | None], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per image or video frame: face status and box, predicted class, one
    probability per class; `progress(done, total)` after each chunk (total None if unknown).

    Row keys: image (the file), frame and time (of a video; None for an image), face
    (`detected`; `center` = the centre crop: the model was trained on centre crops, or
    `fallback_center` found no face; `none` = no face, not scored), face_probability
    (MTCNN's), box_x0..box_y1 (the crop box in image pixels), predicted, p_<class> for each
    class in the model's order, folds and units (which models voted).
    """
    if not units:
        raise FerError("predict: no trained units to predict with")
    card = units[0].card
    crop = card["crop"]
    crop_size, margin = crop["crop_size"], crop["margin"]
    if crop_size is None or margin is None:
        raise FerError(f"unit {card['unit_id']}: its best.json has no crop size or margin")
    device = next(units[0].model.parameters()).device
    mtcnn = _load_mtcnn(str(device)) if crop["detector"] in DETECTED_BY_MTCNN else None
    folds = ",".join(str(u.card["fold"]) for u in units)
    unit_ids = ",".join(u.card["unit_id"] for u in units)
    rows: list[dict[str, Any]] = []
    total = count_frames(files) if progress is not None else None
    for chunk in _chunks(frames_of(files), CHUNK):
        crops, faces = _crop_frames(chunk, mtcnn, crop_size, margin)
        scored = [i for i, face in enumerate(faces) if face["face"] != "none" or fallback_center]
        probabilities = _ensemble(units, crops[scored], card["input_size"], batch_size)
        by_image = dict(zip(scored, probabilities.tolist(), strict=True))
        classes = card["classes"]
        for i, frame in enumerate(chunk):
            face = faces[i]
            if face["face"] == "none":  # the centre square, when asked for; else no box
                face = {**face, "face": "center"} if fallback_center else _without_box(face)
            probs = by_image.get(i)
            row = {"image": str(frame.source), "frame": frame.index, "time": frame.time, **face}
            row["predicted"] = None if probs is None else classes[_argmax(probs)]
            values = probs if probs is not None else [math.nan] * len(classes)
            row.update({f"p_{name}": value for name, value in zip(classes, values, strict=True)})
            row.update(folds=folds, units=unit_ids)
            rows.append(row)
        if progress is not None:
            progress(len(rows), total)
    return rows


def _chunks(frames: Iterator[Frame], size: int) -> Iterator[list[Frame]]:
    chunk: list[Frame] = []
    for frame in frames:
        chunk.append(frame)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


@torch.no_grad()
def _ensemble(
    units: Sequence[LoadedUnit], crops: torch.Tensor, input_size: int, batch_size: int
) -> torch.Tensor:
    """Mean over the units of `evaluate.predict`'s probabilities (N x C, CPU float32)."""
    if len(crops) == 0:
        return torch.empty(0, len(units[0].card["classes"]))
    device = next(units[0].model.parameters()).device
    images = crops.to(device)
    total = predict(units[0].model, images, input_size, batch_size)
    for unit in units[1:]:
        total = total + predict(unit.model, images, input_size, batch_size)
    return total / len(units)


def _crop_frames(
    pictures: Sequence[Frame], mtcnn: FaceDetector | None, crop_size: int, margin: float
) -> tuple[torch.Tensor, list[FaceStatus]]:
    """Crops (uint8 N x 3 x S x S; the centre square where no face was found) and per
    picture the face status, MTCNN probability and crop box."""
    frames = [p.image for p in pictures]
    hits: list[Hit | None] = [None] * len(frames)
    if mtcnn is not None:
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, frame in enumerate(frames):
            by_size.setdefault(frame.size, []).append(i)  # MTCNN batches need equal sizes
        for group in by_size.values():
            for k in range(0, len(group), DETECT_BATCH):
                batch = group[k : k + DETECT_BATCH]
                for i, hit in zip(batch, _detect(mtcnn, [frames[i] for i in batch]), strict=True):
                    hits[i] = hit
    crops = torch.zeros((len(frames), 3, crop_size, crop_size), dtype=torch.uint8)
    faces: list[FaceStatus] = []
    for i, (frame, hit) in enumerate(zip(frames, hits, strict=True)):
        crops[i], box = crop_frame(frame, hit, crop_size, margin)
        # "center" without MTCNN: the model was trained on centre crops (detector: center)
        status: Literal["detected", "center", "none"] = (
            "center" if mtcnn is None else "detected" if hit is not None else "none"
        )
        x0, y0, x1, y1 = (float(v) for v in box)
        faces.append(
            {
                "face": status,
                "face_probability": hit[1] if hit is not None else math.nan,
                "box_x0": x0,
                "box_y0": y0,
                "box_x1": x1,
                "box_y1": y1,
            }
        )
    return crops, faces


def _without_box(face: FaceStatus) -> FaceStatus:
    nan = math.nan
    return {**face, "box_x0": nan, "box_y0": nan, "box_x1": nan, "box_y1": nan}


def _open_video(path: Path) -> InputContainer:
    try:
        import av
    except ImportError as exc:
        raise FerError(f"{path}: reading videos needs PyAV ({exc}); pip install av") from None
    try:
        return av.open(str(path))
    except av.error.FFmpegError as exc:
        raise FerError(f"{path}: cannot read video ({exc})") from None


def _video_frames(path: Path) -> Iterator[Frame]:
    import av

    with _open_video(path) as container:
        try:
            for index, frame in enumerate(container.decode(video=0)):
                time = None if frame.time is None else float(frame.time)
                yield Frame(path, index, time, frame.to_image().convert("RGB"))
        except av.error.FFmpegError as exc:
            raise FerError(f"{path}: cannot decode video ({exc})") from None
