"""Atomic file writes: a reader sees either the old file or the complete new one, never a part.

Everything is written to a hidden temp file in the destination folder, flushed and fsynced,
then renamed over the destination (rename is atomic within one file system). A full disk
(ENOSPC, EDQUOT) is a `FerError` that says "disk full" and names the file and its free space;
the temp file is removed and the previous version of the destination stays as it was.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from fer_core.errors import FerError

TEMP_PREFIX = ".tmp-"
_UMASK = os.umask(0)
os.umask(_UMASK)
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(path: Path, exc: OSError) -> FerError:
    """The one-line error for a write that hit a full disk (or quota): file, free space, fix."""
    try:
        free = f"{shutil.disk_usage(Path(path).parent).free // 1024} KiB free"
    except OSError:
        free = "free space unknown"
    return FerError(
        f"disk full: could not write {path} ({os.strerror(exc.errno or errno.ENOSPC)}; {free} "
        f"on the file system of {Path(path).parent}); the previous {Path(path).name}, if any, "
        "is intact; free some space there and re-launch to resume"
    )


def _atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX + path.name + ".", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are shared files
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            raise disk_full_error(path, exc) from exc
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    _atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_array(path: Path, array: Any) -> None:
    """`numpy.save` a numpy array to `path` atomically (a `.npy` file, memory-mappable)."""
    import numpy as np

    _atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False))


def atomic_torch_save(obj: object, path: Path) -> str:
    """`torch.save` to `path` atomically; returns the sha256 of the bytes written.

    The digest lets a reader detect a file corrupted after the fact (see `load_checked`).
    """
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_temp_file(path: Path) -> bool:
    """True for the temp files of an unfinished atomic write (readers skip them)."""
    return Path(path).name.startswith(TEMP_PREFIX)
