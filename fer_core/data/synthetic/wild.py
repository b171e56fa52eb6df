"""Synthetic twins of RAF-DB, FER2013, FERPlus and AffectNet, in their distributed formats.

At scale 1 a twin has the real split sizes and class counts (the published ones, below);
at scale S every (split, class) count is `max(1, round(count x S))`, so every class stays in
every split. The list files are what the adapters read, byte-compatible with the real ones;
the faces are the cartoon faces of `cartoon`. FER2013's faces live in its CSV, so a twin
draws at most `POOL` distinct faces per split and class and repeats them beyond that (at
scale 1, FER2013's 7,215 training happy faces are 40 faces repeated). `write_lists` writes
the list files alone: at scale 1 they carry the split sizes and class counts without
287,651 AffectNet images (the adapter's counts test reads them; its image checks run on a
small twin with images).

FERPlus's per-class majority counts are not published split by split; its twin labels each
FER2013 face with the same-named FERPlus class, turns the first neutral face of each split
and one in 40 after it into contempt, gives one face in 25 votes the majority rule drops
(unknown, not a face, no majority in turn) and leaves one row in 500 without an image name;
the first face of each split and class is never dropped, so every class is in every split.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from fer_core.data import affectnet, fer2013, rafdb
from fer_core.data.synthetic.cartoon import (
    Look,
    draw_face,
    expression_at,
    random_look,
    random_quirk,
)
from fer_core.data.synthetic.twins import Job, TwinParams, materialise
from fer_core.errors import FerError

FORMAT = 1  # bump when a twin's files change for the same parameters
KINDS = ("rafdb", "fer2013", "ferplus", "affectnet")
POOL = 40
CHUNK = 500  # images per writing job

# Published split sizes and class counts, in each dataset's label order.
COUNTS: dict[str, dict[str, list[int]]] = {
    "rafdb": {  # surprise, fear, disgust, happiness, sadness, anger, neutral
        "train": [1290, 281, 717, 4772, 1982, 705, 2524],  # 12,271
        "test": [329, 74, 160, 1185, 478, 162, 680],  # 3,068
    },
    "fer2013": {  # angry, disgust, fear, happy, sad, surprise, neutral
        "train": [3995, 436, 4097, 7215, 4830, 3171, 4965],  # 28,709
        "val": [467, 56, 496, 895, 653, 415, 607],  # 3,589 (PublicTest)
        "test": [491, 55, 528, 879, 594, 416, 626],  # 3,589 (PrivateTest)
    },
    "affectnet": {  # neutral ... contempt, then none, uncertain, non-face (codes 0..10)
        "train": [74874, 134415, 25459, 14090, 6378, 3803, 24882, 3750, 33088, 11645, 82414],
        "test": [500] * 11,  # the official validation set: 500 per category
    },
}
SIZES = {"rafdb": (160, 160), "affectnet": (192, 192)}  # the frame a face is placed in
ALIGNED_SIDE = 100  # RAF-DB's aligned images
# Where a twin's face sits in its square (fractions, as `cartoon.Look`): fixed, so a face's
# box follows from its placement alone; the square's size and place vary per image.
GEOMETRY = {"cx": 0.5, "cy": 0.47, "half_h": 0.36, "aspect": 0.78}
CARTOON = {  # a class name -> the cartoon expression that draws it (None: neutral)
    "surprise": "surprise",
    "fear": "fear",
    "disgust": "disgust",
    "happiness": "happy",
    "happy": "happy",
    "sadness": "sadness",
    "sad": "sadness",
    "anger": "anger",
    "angry": "anger",
    "contempt": "contempt",
}
FERPLUS_OF = {  # a FER2013 class -> its FERPlus class
    "angry": "anger",
    "disgust": "disgust",
    "fear": "fear",
    "happy": "happiness",
    "sad": "sadness",
    "surprise": "surprise",
    "neutral": "neutral",
}


def scaled_counts(kind: str, scale: float) -> dict[str, list[int]]:
    """The twin's count per split and class code: the real ones at scale 1."""
    if not 0 < scale <= 1:
        raise FerError(f"scale: {scale!r} must be a number in (0, 1]")
    base = COUNTS["fer2013" if kind == "ferplus" else kind]
    return {split: [max(1, round(n * scale)) for n in counts] for split, counts in base.items()}


def write_wild_twin(
    kind: str,
    out: str | Path,
    scale: float = 1.0,
    seed: int = 0,
    *,
    overwrite: bool = False,
    workers: int | None = None,
) -> Path:
    """Write a twin of `kind` under `out` (atomically; reused when the parameters match)."""
    if kind not in KINDS:
        raise FerError(f"dataset: {kind!r} has no fixed-split twin; one of {', '.join(KINDS)}")
    params: TwinParams = {
        "kind": kind,  # type: ignore[typeddict-item]  # checked against KINDS above
        "format": FORMAT,
        "image_size": list(SIZES.get(kind, (fer2013.SIDE, fer2013.SIDE))),
        "frames_per_sequence": [1, 1],
        "seed": int(seed),
        "scale": float(scale),
    }
    scaled_counts(kind, scale)  # a bad scale fails before anything is written
    jobs: list[Job] = [(0, "lists", [])]
    if kind in SIZES:
        entries = [(name, code) for _, name, code in _plan(kind, scale, seed)]
        jobs += [
            (1 + k // CHUNK, "images", entries[k : k + CHUNK])
            for k in range(0, len(entries), CHUNK)
        ]
    return materialise(Path(out), params, _write_job, jobs, overwrite, workers)


def write_lists(kind: str, root: Path, scale: float, seed: int = 0) -> None:
    """The twin's list files (with FER2013's pixels) under `root`, and no image file."""
    plan = list(_plan(kind, scale, seed))
    if kind == "rafdb":
        lines = [f"{Path(name).name} {code + 1}" for _, name, code in plan]
        _text(root / rafdb.LIST_FILE, "\n".join(lines) + "\n")
    elif kind == "affectnet":
        for split, name in affectnet.SPLIT_FILES.items():
            rows = [(n, c, s) for s, n, c in plan if s == split]
            _text(root / affectnet.LISTS_DIR / name, _affectnet_csv(rows, seed))
    else:
        _fer_csvs(kind, root, plan, seed)


def _plan(kind: str, scale: float, seed: int) -> Iterator[tuple[str, str, int]]:
    """(split, image name or path, class code) of every image, classes interleaved."""
    for s, (split, counts) in enumerate(scaled_counts(kind, scale).items()):
        codes = np.repeat(np.arange(len(counts)), counts)
        np.random.default_rng([seed, 7, s]).shuffle(codes)
        width = 5 if split == "train" else 4  # RAF-DB's own numbering
        for i, code in enumerate(codes.tolist()):
            if kind == "rafdb":
                name = f"{split}_{i + 1:0{width}d}.jpg"
            elif kind == "affectnet":
                digest = hashlib.sha224(f"{seed}:{split}:{i}".encode()).hexdigest()
                name = f"{1 + i % 997}/{digest}.jpg"
            else:
                name = fer2013.image_id(i)
            yield split, name, code


def _write_job(root: Path, params: TwinParams, job: Job) -> None:
    _, what, entries = job
    kind, scale, seed = params["kind"], params.get("scale", 1.0), params["seed"]
    if what == "lists":
        write_lists(kind, root, scale, seed)
        return
    width, height = params["image_size"]
    for name, code in entries:
        frame, box = _placed_face(name, seed, (width, height), _class_name(kind, code))
        if kind == "rafdb":
            _jpeg(root / rafdb.image_path(name, "original"), frame)
            aligned = frame.resize((ALIGNED_SIDE, ALIGNED_SIDE), box=_square(box))
            _jpeg(root / rafdb.image_path(name, "aligned"), aligned)
        else:
            _jpeg(root / affectnet.IMAGES_DIR / name, frame)


def _class_name(kind: str, code: int) -> str:
    if kind == "rafdb":
        return rafdb.CLASSES[code]
    if kind == "affectnet":
        return affectnet.CLASSES[code] if code < len(affectnet.CLASSES) else "neutral"
    return fer2013.CLASSES[code]


def _placement(name: str, seed: int, size: tuple[int, int]) -> tuple[int, int, int]:
    """(side, left, top) of image `name`'s face square in its frame: from a hash of the
    name, so the list writer knows each box without drawing the face."""
    width, height = size
    h = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:12], "big")
    side = height // 2 + h % (height // 4)
    left = (h >> 32) % (width - side + 1)
    top = (h >> 64) % (height - side + 1)
    return side, left, top


def _face_box(name: str, seed: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The face's box (x0, y0, x1, y1) in its frame: the head ellipse's bounding box."""
    side, left, top = _placement(name, seed, size)
    half_h = GEOMETRY["half_h"] * side
    half_w = half_h * GEOMETRY["aspect"]
    cx, cy = left + GEOMETRY["cx"] * side, top + GEOMETRY["cy"] * side
    return (round(cx - half_w), round(cy - half_h), round(cx + half_w), round(cy + half_h))


def _placed_face(
    name: str, seed: int, size: tuple[int, int], emotion: str
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Image `name`'s frame: a cartoon face at its placement, and the face's box."""
    rng = np.random.default_rng([seed, 8, *hashlib.sha256(name.encode()).digest()[:8]])
    side, left, top = _placement(name, seed, size)
    look = replace(
        random_look(rng, colour=True),
        cx=GEOMETRY["cx"],
        cy=GEOMETRY["cy"],
        half_h=GEOMETRY["half_h"],
        aspect=GEOMETRY["aspect"],
    )
    frame = Image.new("RGB", size, tuple(int(v) for v in rng.integers(60, 200, 3)))
    frame.paste(_face(rng, (side, side), "RGB", look, emotion), (left, top))
    return frame, _face_box(name, seed, size)


def _face(
    rng: np.random.Generator, size: tuple[int, int], mode: str, look: Look, emotion: str
) -> Image.Image:
    cartoon = CARTOON.get(emotion)
    params = expression_at(cartoon or "happy", 1.0 if cartoon else 0.0, look, random_quirk(rng))
    return draw_face(size, mode, look, params)


def _square(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0)
    left, top = (x0 + x1 - side) // 2, (y0 + y1 - side) // 2
    return (left, top, left + side, top + side)


def _affectnet_csv(rows: list[tuple[str, int, str]], seed: int) -> str:
    """AffectNet's CSV for `rows`, each face's box where `_placed_face` draws it. The
    twin's landmarks are empty: nothing here reads them."""
    lines = io.StringIO()
    writer = csv.writer(lines, lineterminator="\n")
    writer.writerow(affectnet.COLUMNS)
    size = SIZES["affectnet"]
    for name, code, _ in rows:
        x0, y0, x1, y1 = _face_box(name, seed, size)
        valence = 0.0 if code >= 8 else round(float(np.tanh(code - 3)) / 2, 3)
        writer.writerow([name, x0, y0, x1 - x0, y1 - y0, "", code, valence, 0.0])
    return lines.getvalue()


def _fer_csvs(kind: str, root: Path, plan: list[tuple[str, str, int]], seed: int) -> None:
    """`fer2013.csv` (and for FERPlus `fer2013new.csv`, same rows in the same order)."""
    usage = {split: name for name, split in fer2013.USAGE.items()}
    pool: dict[tuple[str, int], list[str]] = {}
    faces = io.StringIO()
    faces.write(",".join(fer2013.COLUMNS) + "\n")
    rng = np.random.default_rng([seed, 9])
    for split, _, code in plan:
        drawn = pool.setdefault((split, code), [])
        if len(drawn) < POOL:
            look = random_look(rng, colour=False)
            face = _face(rng, (fer2013.SIDE, fer2013.SIDE), "L", look, fer2013.CLASSES[code])
            drawn.append(" ".join(map(str, np.asarray(face).ravel().tolist())))
            pixels = drawn[-1]
        else:
            pixels = drawn[int(rng.integers(len(drawn)))]
        faces.write(f"{code},{pixels},{usage[split]}\n")
    _text(root / fer2013.CSV_FILE, faces.getvalue())
    if kind == "ferplus":
        _text(root / fer2013.PLUS_FILE, _ferplus_csv(plan, usage, seed))


def _ferplus_csv(plan: list[tuple[str, str, int]], usage: dict[str, str], seed: int) -> str:
    """FERPlus votes for the twin's FER2013 rows (the class mix: the module docstring)."""
    rng = np.random.default_rng([seed, 10])
    lines = io.StringIO()
    lines.write(",".join(fer2013.PLUS_COLUMNS) + "\n")
    n_votes = len(fer2013.PLUS_VOTES)
    contempt = fer2013.PLUS_CLASSES.index("contempt")
    kept: set[tuple[str, int]] = set()  # (split, class) with a kept face: never drop the first
    for i, (split, _, code) in enumerate(plan):
        target = fer2013.PLUS_CLASSES.index(FERPLUS_OF[fer2013.CLASSES[code]])
        if target == 0 and (i % 40 == 1 or (split, contempt) not in kept):
            target = contempt
        first = (split, target) not in kept
        kept.add((split, target))
        votes = [0] * n_votes
        others = [k for k in range(len(fer2013.PLUS_CLASSES)) if k != target]
        a, b = (int(k) for k in rng.choice(others, 2, replace=False))
        if i % 25 == 0 and not first:  # a face the majority rule drops, three ways in turn
            drop = (i // 25) % 3
            if drop == 2:  # no majority: 4 + 4 + 2
                votes[target], votes[a], votes[b] = 4, 4, 2
            else:  # unknown or not a face holds the majority
                votes[n_votes - 2 + drop], votes[target] = 7, 3
        else:
            votes[target] = int(rng.integers(6, 10))
            votes[a] = 10 - votes[target] - 1
            votes[b] += 1  # a single vote: noise the rule removes
        left_out = i % 500 == 7 and not first  # FERPlus left a few faces out
        image = "" if left_out else f"{fer2013.image_id(i)}.png"
        lines.write(f"{usage[split]},{image},{','.join(map(str, votes))}\n")
    return lines.getvalue()


def _jpeg(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=90)


def _text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
