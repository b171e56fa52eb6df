"""The fixed-split, in-the-wild datasets: which adapter reads each kind, its options, and how
each gives the face of an indexed image.

CK+ and Oulu are folders of image files that MTCNN crops; these differ. RAF-DB's aligned
images are the face already (the whole image is the crop), FER2013's faces are 48x48 pixel
strings inside a CSV (no file: the pixels are the content), and AffectNet's CSVs give each
face's box (crop it with the margin; no detector). A `FaceSource` hides that from the
fingerprint (`content`), the index check (`check`) and the crops (`frame`, `box`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fer_core.data import affectnet, fer2013, rafdb
from fer_core.data.listing import Listing
from fer_core.errors import FerError

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Option:
    """A dataset option (a grid key of that dataset kind) and its allowed values."""

    values: tuple[str, ...]
    default: str


OPTIONS: dict[str, dict[str, Option]] = {
    "rafdb": {"images": Option(rafdb.IMAGES, "aligned")},
    "fer2013": {},
    "ferplus": {"label_mode": Option(fer2013.LABEL_MODES, "majority")},
    "affectnet": {"classes": Option(affectnet.VARIANTS, "8")},
}
KINDS = tuple(OPTIONS)


def resolve_options(kind: str, given: Mapping[str, object] | None, where: str) -> dict[str, str]:
    """The kind's options with defaults filled in; an unknown option or value names it."""
    known = OPTIONS.get(kind, {})
    options = {key: option.default for key, option in known.items()}
    for key, value in (given or {}).items():
        if key not in known:
            raise FerError(f"{where}: {key!r} is not an option of dataset kind {kind!r}")
        text = str(value)
        if text not in known[key].values:
            raise FerError(f"{where}: {key} {value!r} is not one of {', '.join(known[key].values)}")
        options[key] = text
    return options


def default_detector(kind: str, options: Mapping[str, str]) -> str:
    """How a kind's faces are cropped unless the grid says otherwise: the CSV's box for
    AffectNet, the whole image where it is the face already (RAF-DB aligned, FER2013)."""
    if kind == "affectnet":
        return "box"
    if kind in ("fer2013", "ferplus") or options.get("images") == "aligned":
        return "center"
    return "mtcnn"


def check_detector(kind: str, detector: str, where: str) -> None:
    """AffectNet crops its given boxes and nothing else has any; a 48x48 FER2013 face is
    too small for MTCNN and is the face already."""
    if kind == "affectnet":
        allowed: tuple[str, ...] = ("box",)
    elif kind in ("fer2013", "ferplus"):
        allowed = ("center",)
    else:
        allowed = ("mtcnn", "center")
    if detector not in allowed:
        raise FerError(
            f"{where}: detector {detector!r} is not one of {', '.join(allowed)} for kind {kind}"
        )


def scan(kind: str, root: Path, options: Mapping[str, str]) -> Listing:
    """The kind's list files read into a Listing (no image is opened)."""
    if kind == "rafdb":
        return rafdb.scan_rafdb(root, options["images"])
    if kind == "fer2013":
        return fer2013.scan_fer2013(root)
    if kind == "ferplus":
        return fer2013.scan_ferplus(root, options["label_mode"])
    if kind == "affectnet":
        return affectnet.scan_affectnet(root, options["classes"])
    raise FerError(f"dataset: {kind!r} is not one of {', '.join(KINDS)}")


class FaceSource:
    """Image files under a root: the default for every kind whose images are files."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def content(self, image_id: str, file_digest: Callable[[Path], str]) -> str:
        """What a changed image changes: here the sha256 of the file's bytes."""
        return file_digest(self.root / image_id)

    def check(self, image_id: str) -> None:
        """The index's integrity check of one image (it decodes; for AffectNet, its box
        lies inside it)."""
        from fer_core.data.index import check_image

        check_image(self.root / image_id)

    def frame(self, image_id: str) -> Image.Image:
        """The image as RGB."""
        from fer_core.data.faces import open_rgb

        return open_rgb(self.root / image_id, "; rebuild the index")

    def box(self, image_id: str) -> Box | None:
        """The face box the dataset gives (x0, y0, x1, y1), or None (detect or centre)."""
        return None


class PixelSource(FaceSource):
    """FER2013 (and FERPlus): 48x48 grey faces as pixel strings in `fer2013.csv`."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.pixels = fer2013.read_pixels(root)

    def _pixels(self, image_id: str) -> np.ndarray:
        try:
            return self.pixels[image_id]
        except KeyError:
            raise FerError(
                f"{self.root / fer2013.CSV_FILE}: has no row {image_id!r}; rebuild the index"
            ) from None

    def content(self, image_id: str, file_digest: Callable[[Path], str]) -> str:
        return hashlib.sha256(self._pixels(image_id).tobytes()).hexdigest()

    def check(self, image_id: str) -> None:
        self._pixels(image_id)  # the pixel count was checked when the CSV was read

    def frame(self, image_id: str) -> Image.Image:
        side = fer2013.SIDE
        grey = Image.fromarray(self._pixels(image_id).reshape(side, side), "L")
        return grey.convert("RGB")


class BoxSource(FaceSource):
    """AffectNet: image files whose face box comes from the CSVs (part of the content)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.boxes = affectnet.read_boxes(root)

    def content(self, image_id: str, file_digest: Callable[[Path], str]) -> str:
        return f"{file_digest(self.root / image_id)}:{list(self._box(image_id))}"

    def check(self, image_id: str) -> None:
        super().check(image_id)
        path = self.root / image_id
        with Image.open(path) as image:
            width, height = image.size
        x0, y0, x1, y1 = self._box(image_id)
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height or x1 <= x0 or y1 <= y0:
            raise FerError(
                f"{path}: face box {[x0, y0, x1 - x0, y1 - y0]} (x, y, width, height from "
                f"{self.boxes[image_id][1]}) lies outside the "
                f"{width}x{height} image; fix the row or drop it"
            )

    def box(self, image_id: str) -> Box | None:
        return self._box(image_id)

    def _box(self, image_id: str) -> Box:
        try:
            return self.boxes[image_id][0]
        except KeyError:
            raise FerError(f"{image_id}: not in AffectNet's CSVs; rebuild the index") from None


def face_source(kind: str, root: Path) -> FaceSource:
    """How the images of a dataset of `kind` under `root` are read."""
    if kind in ("fer2013", "ferplus"):
        return PixelSource(root)
    if kind == "affectnet":
        return BoxSource(root)
    return FaceSource(root)
