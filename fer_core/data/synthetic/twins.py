"""Synthetic twins of CK+ and Oulu-CASIA, written in the exact raw layouts.

Why: the real datasets are licence-restricted and cannot ship with the project, yet every
piece (index, face crops, training, reports) must run end to end on a laptop and in CI. The
CK+ twin follows the real roster (118 subjects, 327 labelled sequences, the real class
imbalance), the Oulu twin Oulu's 80 x 6 design, so the real adapters read them unchanged.

The faces are cartoons (`fer_core.data.synthetic.cartoon`) whose brows, eyes, nose and mouth encode
the expression, rising from neutral (first frame) to the apex (last frame); subjects differ in
looks, resting face and expressiveness, so ambiguous, hard examples exist. Deterministic
for a given seed. A twin is built under a temp name and renamed into place when complete, so
nobody sees half a twin; calling again with the same parameters reuses it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, TypedDict

import numpy as np
from PIL import Image

from fer_core.data import ckplus, oulu
from fer_core.data.synthetic.cartoon import random_look, sequence_frames
from fer_core.errors import FerError

FORMAT = 1
PARAMS_FILE = "SYNTHETIC.json"
ROSTER_COLUMNS = ("subject", "sequence", "emotion_code")
DEFAULT_ROSTER = Path(__file__).with_name("ckplus_roster.csv")  # the real 327 labelled sequences
Size = tuple[int, int]  # (width, height), as PIL
CKPLUS_SIZE: Size = (640, 490)  # the real sets' frame sizes
OULU_SIZE: Size = (320, 240)
Job = tuple[int, str, list[tuple[str, int]]]  # (subject number, subject, [(sequence, code)])


class _TwinParams(TypedDict):
    kind: Literal["ckplus", "oulu", "rafdb", "fer2013", "ferplus", "affectnet"]
    format: int
    image_size: list[int]  # [width, height]
    frames_per_sequence: list[int]  # [min, max]
    seed: int


class TwinParams(_TwinParams, total=False):
    """What built a twin: written to its `SYNTHETIC.json`, compared to reuse it."""

    roster_sha256: str  # CK+ only
    n_subjects: int  # Oulu only
    scale: float  # a fixed-split twin's (fer_core.data.synthetic.wild)


def write_ckplus_twin(
    out: str | Path,
    roster_csv: str | Path = DEFAULT_ROSTER,
    image_size: Size = CKPLUS_SIZE,
    frames_per_sequence: tuple[int, int] = (7, 13),
    seed: int = 0,
    *,
    overwrite: bool = False,
    workers: int | None = None,
) -> Path:
    """Write a CK+-layout twin of the roster's labelled sequences under `out`.

    Each roster sequence gets 7-13 frames (varying), neutral to apex, and an Emotion file
    for its last frame, as CK+ has; every third subject also gets an unlabelled sequence (an
    empty Emotion folder), which the index must skip. About one subject in ten is colour at
    640x480 (scaled with `image_size`), as in the real set; the rest are grayscale.
    """
    roster = read_roster(Path(roster_csv))
    params: TwinParams = {
        "kind": "ckplus",
        "format": FORMAT,
        "image_size": list(_check_size(image_size)),
        "frames_per_sequence": list(_check_frames(frames_per_sequence)),
        "seed": int(seed),
        "roster_sha256": hashlib.sha256(Path(roster_csv).read_bytes()).hexdigest(),
    }
    subjects = sorted(roster)
    jobs = [(i, s, roster[s]) for i, s in enumerate(subjects)]
    return materialise(Path(out), params, _write_ckplus_subject, jobs, overwrite, workers)


def write_oulu_twin(
    out: str | Path,
    image_size: Size = OULU_SIZE,
    seed: int = 0,
    *,
    frames_per_sequence: tuple[int, int] = (6, 12),
    n_subjects: int = 80,
    overwrite: bool = False,
    workers: int | None = None,
) -> Path:
    """Write an Oulu-CASIA-layout twin (VL/Strong, colour JPEG) under `out`: `n_subjects`
    subjects P001... x 6 expressions, frames 000.jpeg... from neutral to apex."""
    if not 1 <= n_subjects <= 999:
        raise FerError(f"n_subjects: {n_subjects} must be in 1..999")
    params: TwinParams = {
        "kind": "oulu",
        "format": FORMAT,
        "image_size": list(_check_size(image_size)),
        "frames_per_sequence": list(_check_frames(frames_per_sequence)),
        "seed": int(seed),
        "n_subjects": int(n_subjects),
    }
    jobs: list[Job] = [(i, f"P{i + 1:03d}", []) for i in range(n_subjects)]
    return materialise(Path(out), params, _write_oulu_subject, jobs, overwrite, workers)


def read_roster(path: Path) -> dict[str, list[tuple[str, int]]]:
    """subject -> [(sequence, CK+ emotion code 1..7)] from a roster CSV."""
    if not path.is_file():
        raise FerError(f"roster: {path} does not exist; give the CK+ roster CSV")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ROSTER_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise FerError(
                f"{path}: missing column {missing[0]!r}; need {', '.join(ROSTER_COLUMNS)}"
            )
        roster: dict[str, list[tuple[str, int]]] = {}
        for row in reader:
            code = row["emotion_code"].strip()
            if code not in {str(c) for c in range(1, len(ckplus.CLASSES) + 1)}:
                raise FerError(f"{path}:{reader.line_num}: emotion_code {code!r} is not 1..7")
            roster.setdefault(row["subject"].strip(), []).append(
                (row["sequence"].strip(), int(code))
            )
    if not roster:
        raise FerError(f"{path}: no rows")
    return roster


def _write_ckplus_subject(root: Path, params: TwinParams, job: Job) -> None:
    index, subject, sequences = job
    rng = np.random.default_rng([params["seed"], 1, index])
    colour = rng.random() < 0.1
    width, height = params["image_size"]
    size = (width, round(height * 480 / 490)) if colour else (width, height)
    mode = "RGB" if colour else "L"
    look = random_look(rng, colour)
    todo = [(seq, code, True) for seq, code in sequences]
    if index % 3 == 0:  # an unlabelled sequence, as most CK+ subjects have
        spare = max(int(seq) for seq, _ in sequences) + 1
        todo.append((f"{spare:03d}", int(rng.integers(1, 8)), False))
    for sequence, code, labelled in todo:
        emotion = ckplus.CLASSES[code - 1]
        n = int(
            rng.integers(params["frames_per_sequence"][0], params["frames_per_sequence"][1] + 1)
        )
        folder = root / ckplus.IMAGES_DIR / subject / sequence
        folder.mkdir(parents=True)
        for i, image in enumerate(sequence_frames(rng, size, mode, look, emotion, n)):
            (folder / f"{subject}_{sequence}_{i + 1:08d}.png").write_bytes(png_bytes(image))
        labels = root / ckplus.EMOTION_DIR / subject / sequence
        labels.mkdir(parents=True)
        if labelled:
            (labels / f"{subject}_{sequence}_{n:08d}_emotion.txt").write_text(f"   {code:.7e}\n")


def _write_oulu_subject(root: Path, params: TwinParams, job: Job) -> None:
    index, subject, _ = job
    rng = np.random.default_rng([params["seed"], 2, index])
    width, height = params["image_size"]
    size = (width, height)
    look = random_look(rng, colour=True)
    for emotion in oulu.CLASSES:
        n = int(
            rng.integers(params["frames_per_sequence"][0], params["frames_per_sequence"][1] + 1)
        )
        folder = root / oulu.BASE_DIR / subject / emotion.capitalize()
        folder.mkdir(parents=True)
        for i, image in enumerate(sequence_frames(rng, size, "RGB", look, emotion, n)):
            image.save(folder / f"{i:03d}.jpeg", "JPEG", quality=90)


def png_bytes(image: Image.Image) -> bytes:
    """A standard 8-bit PNG (grey or RGB) with the `Up` filter and zlib level 1: about twice
    as fast as PIL's adaptive filtering and smaller on these images; PIL and any PNG reader
    open it."""
    pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    up = np.diff(rows, axis=0, prepend=np.zeros((1, rows.shape[1]), np.uint8))  # wraps mod 256
    raw = np.concatenate([np.full((height, 1), 2, np.uint8), up], axis=1).tobytes()
    colour = {"L": 0, "RGB": 2}[image.mode]
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 1))
        + chunk(b"IEND", b"")
    )


def materialise(
    out: Path,
    params: TwinParams,
    write_subject: Callable[[Path, TwinParams, Job], None],
    jobs: list[Job],
    overwrite: bool,
    workers: int | None,
) -> Path:
    """Build the twin in a temp folder beside `out`, then rename it into place."""
    marker = out / PARAMS_FILE
    if out.exists():
        if not out.is_dir():
            raise FerError(f"out: {out} is a file; give a folder for the synthetic twin")
        if not overwrite and marker.is_file() and _read_json(marker) == params:
            return out
        if not overwrite and any(out.iterdir()):
            raise FerError(
                f"out: {out} exists and is not this synthetic twin; choose a new folder or "
                "pass overwrite=True (--overwrite) to replace it"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}.", dir=out.parent))
    try:
        count = workers if workers is not None else min(4, os.cpu_count() or 1)
        if count > 1 and len(jobs) > 1:
            # threads, not processes: zlib and PIL release the GIL for the heavy parts, and
            # threads need no `if __name__ == "__main__"` guard in the caller's script
            with ThreadPoolExecutor(count) as pool:
                list(pool.map(write_subject, [tmp] * len(jobs), [params] * len(jobs), jobs))
        else:
            for job in jobs:
                write_subject(tmp, params, job)
        (tmp / "README.txt").write_text(_readme(params))
        (tmp / PARAMS_FILE).write_text(json.dumps(params, indent=1, sort_keys=True) + "\n")
        _swap_in(tmp, out, params, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _swap_in(tmp: Path, out: Path, params: TwinParams, overwrite: bool) -> None:
    """Rename the finished twin into place. If a concurrent writer got there first with the
    same parameters, keep theirs; replace an existing folder only when asked to."""
    if not out.exists():
        try:
            os.replace(tmp, out)
            return
        except OSError:  # created meanwhile by a concurrent writer
            pass
    if not overwrite and _read_json(out / PARAMS_FILE) == params:
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}.old.", dir=out.parent))
    os.replace(out, old / "twin")
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


NAMES = {
    "ckplus": "CK+ (Extended Cohn-Kanade)",
    "oulu": "Oulu-CASIA",
    "rafdb": "RAF-DB",
    "fer2013": "FER2013",
    "ferplus": "FERPlus",
    "affectnet": "AffectNet",
}


def _readme(params: TwinParams) -> str:
    name = NAMES[params["kind"]]
    return (
        f"SYNTHETIC DATA - THIS IS NOT {name}.\n\n"
        "Every image here is a cartoon face drawn procedurally by fer_core.data.synthetic.twins "
        "(PIL ellipses and lines); no real person is shown and no real image was used.\n"
        f"It copies the raw folder layout of {name} so the project's real dataset adapters "
        "read it unchanged, and it keeps that dataset's design ("
        + (
            "splits and classes, the real split sizes and class counts at scale 1"
            if "scale" in params
            else "subjects, sequences, classes"
        )
        + (", the real CK+ roster and class imbalance" if params["kind"] == "ckplus" else "")
        + ").\nUse it to test and demonstrate the pipeline; accuracies measured on it say "
        "nothing about the paper's results on the real data.\n\n"
        f"Parameters: {json.dumps(params, sort_keys=True)}\n"
    )


def _read_json(path: Path) -> object:
    """The parsed file, or None when it is missing or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _check_size(size: Size) -> Size:
    width, height = (int(v) for v in size)
    if width < 32 or height < 32:
        raise FerError(f"image_size: {tuple(size)} is too small; give (width, height) >= 32")
    return width, height


def _check_frames(frames: tuple[int, int]) -> tuple[int, int]:
    lo, hi = (int(v) for v in frames)
    if not 1 <= lo <= hi:
        raise FerError(
            f"frames_per_sequence: {tuple(frames)} must be (min, max) with 1 <= min <= max"
        )
    return lo, hi
