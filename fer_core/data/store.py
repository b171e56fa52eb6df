"""The on-disk crop store: a dataset's face crops as uint8 `.npy` shards, read by index.

Why: holding every crop in memory (`faces.pt`) is fine for CK+ and Oulu (a few hundred MB) but
not for AffectNet (287k crops: 7.5 GB at 112 px, 77 GB at 299 px). A large dataset's crops go
to `crops/shard-NNNNN.npy` instead, each an N_k x 3 x S x S uint8 array of consecutive index
rows, and a unit reads only the rows of its next batch. Reads are positioned reads (`os.preadv`)
into a fresh buffer, not a memory map: pages of a mapped file count in the reader's resident
set (RSS) once touched, so an epoch over a mapped 7.5 GB file would grow a unit to 7.5 GB,
while positioned reads leave the file in the kernel's page cache, which it reclaims at will. The
shards are ordinary `.npy` files (`numpy.load(..., mmap_mode="r")` maps them for inspection).

A shard is written atomically (temp file, rename) after its side file `shard-NNNNN.meta.npz`
(the crop boxes, detection flags and probabilities of its rows): a present shard of the right
size is done, so preparation killed half-way resumes at the first missing shard. `store.json`
names the crops' fingerprint: shards of another fingerprint are deleted before writing.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fer_core.errors import FerError
from fer_core.io import atomic_save_array, atomic_write_bytes, atomic_write_text, is_temp_file

STORE_DIR = "crops"
STORE_JSON = "store.json"
SHARD_BYTES = 256 << 20  # about this many bytes of crops per shard
Selector = torch.Tensor | Sequence[int] | slice | int


@dataclass(frozen=True)
class ShardRows:
    """What preparation hands the store for one shard: its crops and their side data."""

    images: np.ndarray  # uint8 n x 3 x S x S
    boxes: np.ndarray  # float32 n x 4
    detected: np.ndarray  # bool n
    probs: np.ndarray  # float32 n


def shard_rows(crop_size: int) -> int:
    """Rows per shard: about `SHARD_BYTES` of crops (at least one)."""
    return max(1, SHARD_BYTES // (3 * crop_size * crop_size))


def shard_path(directory: Path, shard: int) -> Path:
    return directory / f"shard-{shard:05d}.npy"


def meta_path(directory: Path, shard: int) -> Path:
    return directory / f"shard-{shard:05d}.meta.npz"


def write_store(
    directory: Path,
    n: int,
    crop_size: int,
    fingerprint: str,
    make_rows: Callable[[int, int, Callable[[int], None]], ShardRows],
    progress: Callable[[int, int], None] | None = None,
    rows_per_shard: int | None = None,
) -> int:
    """Write the shards of rows 0..n-1 that are not yet on disk; returns how many were done
    already (resumed). `make_rows(start, stop, tick)` crops rows start..stop-1, calling
    `tick(k)` as it finishes k of them; `progress(done, total)` counts the rows cropped by this
    call against the rows left to crop (so its rate and ETA are this run's, after a resume)."""
    rows = rows_per_shard or shard_rows(crop_size)
    directory.mkdir(parents=True, exist_ok=True)
    info = {"fingerprint": fingerprint, "n": n, "crop_size": crop_size, "rows_per_shard": rows}
    _forget_other_store(directory, info)
    atomic_write_text(directory / STORE_JSON, json.dumps(info) + "\n")
    n_shards = -(-n // rows)
    todo = [k for k in range(n_shards) if not _shard_done(directory, k, rows, n, crop_size)]
    left = sum(min(rows, n - k * rows) for k in todo)
    done = [0]

    def tick(k: int) -> None:
        done[0] += k
        if progress is not None:
            progress(done[0], left)

    for shard in todo:
        start, stop = shard * rows, min(n, (shard + 1) * rows)
        part = make_rows(start, stop, tick)
        _save_npz(meta_path(directory, shard), part)
        atomic_save_array(shard_path(directory, shard), part.images)
    return n_shards - len(todo)


def read_side_data(directory: Path, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The boxes, detection flags and probabilities of all rows, from the shards' side files."""
    rows = int(json.loads((directory / STORE_JSON).read_text())["rows_per_shard"])
    parts = [np.load(meta_path(directory, k)) for k in range(-(-n // rows))]
    return (
        torch.from_numpy(np.concatenate([p["boxes"] for p in parts])),
        torch.from_numpy(np.concatenate([p["detected"] for p in parts])),
        torch.from_numpy(np.concatenate([p["probs"] for p in parts])),
    )


class CropStore:
    """Read-only access to a written store, shaped like the uint8 N x 3 x S x S tensor it
    replaces: `store[selector]` (a bool mask, index tensor or list, slice or int) returns the
    selected crops as a tensor. Safe to use from DataLoader worker processes: each process
    opens its own file descriptors."""

    dtype = torch.uint8

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        try:
            info = json.loads((self.directory / STORE_JSON).read_text())
            self.n, size = int(info["n"]), int(info["crop_size"])
            self.rows = int(info["rows_per_shard"])
            self.fingerprint = str(info["fingerprint"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FerError(
                f"crop store: {self.directory / STORE_JSON} is missing or unreadable ({exc})"
            ) from None
        self.shape = (self.n, 3, size, size)
        self.row_bytes = 3 * size * size
        self.offsets: list[int] = []
        for shard in range(-(-self.n // self.rows)):
            if not _shard_done(self.directory, shard, self.rows, self.n, size):
                raise FerError(
                    f"crop store: {shard_path(self.directory, shard)} is missing or truncated; "
                    "run `python -m orchestrator data faces` to finish it"
                )
            self.offsets.append(_data_offset(shard_path(self.directory, shard)))
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, selector: Selector) -> torch.Tensor:
        if isinstance(selector, int):
            return self.gather(np.array([selector]))[0]
        if isinstance(selector, slice):
            return self.gather(np.arange(self.n)[selector])
        index = torch.as_tensor(selector)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        return self.gather(index.long().cpu().numpy())

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_fds": {}}  # descriptors do not cross processes

    def gather(self, index: np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
        """The crops of rows `index` (in that order) as a uint8 k x 3 x S x S tensor, read
        straight into `out` when given (e.g. one in shared memory, which a loader worker then
        hands over without another copy). Rows consecutive in both the file and `index` are
        read with one system call."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if index.size and (index.min() < 0 or index.max() >= self.n):
            raise FerError(f"crop store: row index out of range 0..{self.n - 1}")
        if out is None:
            out = torch.empty((len(index), *self.shape[1:]), dtype=torch.uint8)
        flat = out.view(len(index), self.row_bytes).numpy()
        order = np.argsort(index, kind="stable")
        rows = index[order]
        for lo, hi in _runs(rows, self.rows):
            shard, first = divmod(int(rows[lo]), self.rows)
            offset = self.offsets[shard] + first * self.row_bytes
            dest = order[lo:hi]
            if hi - lo == 1 or bool((np.diff(dest) == 1).all()):
                self._read(shard, flat[dest[0] : dest[0] + hi - lo], offset)
            else:  # the same rows wanted in another order: one read per row
                for k, row in enumerate(dest):
                    self._read(shard, flat[row : row + 1], offset + k * self.row_bytes)
        return out

    def _read(self, shard: int, into: np.ndarray, offset: int) -> None:
        view = into.data.cast("B")
        if os.preadv(self._fd(shard), [view], offset) != len(view):
            raise FerError(f"crop store: short read from {shard_path(self.directory, shard)}")

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # forked: the parent's descriptors share its offsets
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds[shard] = os.open(shard_path(self.directory, shard), os.O_RDONLY)
        return fd

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():
            for fd in self._fds.values():
                os.close(fd)


def _runs(rows: np.ndarray, per_shard: int) -> Iterator[tuple[int, int]]:
    """[lo, hi) spans of sorted `rows` that are consecutive and inside one shard."""
    if not len(rows):
        return
    breaks = np.flatnonzero((np.diff(rows) != 1) | (np.diff(rows // per_shard) != 0)) + 1
    edges = [0, *breaks.tolist(), len(rows)]
    yield from zip(edges[:-1], edges[1:], strict=True)


def _data_offset(path: Path) -> int:
    """Where a `.npy` file's array data starts (after its header)."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(handle)
        else:
            np.lib.format.read_array_header_2_0(handle)
        return handle.tell()


def _shard_done(directory: Path, shard: int, rows: int, n: int, size: int) -> bool:
    path = shard_path(directory, shard)
    if not path.is_file() or not meta_path(directory, shard).is_file():
        return False
    count = min(rows, n - shard * rows)
    return path.stat().st_size == _data_offset(path) + count * 3 * size * size


def _forget_other_store(directory: Path, wanted: dict[str, object]) -> None:
    """Delete shards left by a store of other crops (another fingerprint, count or size)."""
    try:
        info = json.loads((directory / STORE_JSON).read_text())
    except (OSError, ValueError):
        info = None
    same = isinstance(info, dict) and all(info.get(k) == v for k, v in wanted.items())
    for path in directory.iterdir():
        if is_temp_file(path) or (not same and path.name.startswith("shard-")):
            path.unlink()


def _save_npz(path: Path, part: ShardRows) -> None:
    """The shard's side data (small), atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, boxes=part.boxes, detected=part.detected, probs=part.probs)
    atomic_write_bytes(path, buffer.getvalue())
