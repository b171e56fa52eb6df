"""sha256 of files, remembered by their stat so that an unchanged file is not read again.

The same trick as git's index: a file whose size, mtime, ctime and inode are what they were
when it was hashed still has that hash. ctime cannot be set by hand (a `cp -p` or `touch -d`
over a file still changes it), so a rewritten file is always read again; a `touch` or a copy
costs one re-read and changes no digest. A file changed within a second of being hashed could
keep its stat (timestamps are coarse), so such "racy" entries are not remembered.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from fer_core.io import atomic_write_text, sha256_file

FORMAT = 1
RACY_SECONDS = 2.0
Entry = list[int | str]  # [size, mtime_ns, ctime_ns, inode, sha256], as stored in the JSON


class DigestCache:
    """Digests of files by absolute path, backed by a small JSON file.

    Loading never fails (a missing or unreadable cache is an empty one: it only costs time).
    `save` keeps the entries still true of their files (one `stat` each), so entries of
    deleted or changed files drop out while other users' entries (data images, checkpoints)
    stay.
    """

    def __init__(self, path: Path | None):
        self.path = Path(path) if path is not None else None
        self._known: dict[str, Entry] = self._load()
        self.hashed = 0  # files read in this session (for benchmarks and messages)
        self.dirty = False  # an entry was added since loading or saving

    def _load(self) -> dict[str, Entry]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            body = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            return {}
        entries = body.get("files")
        return entries if isinstance(entries, dict) else {}

    def sha256(self, path: str | Path, check: Callable[[Path], None] | None = None) -> str:
        """The sha256 of `path`'s bytes (OSError if it cannot be read).

        `check` (e.g. "the image decodes") runs only when the file is read afresh, so it
        costs nothing on an unchanged file; whatever it raises propagates and the file is not
        remembered, so a refused file is checked again until it is fixed.
        """
        name = os.path.abspath(path)
        stat = os.stat(name)
        key: Entry = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
        entry = self._known.get(name)
        if entry is not None and entry[:4] == key:
            return str(entry[4])
        digest = sha256_file(Path(name))
        self.hashed += 1
        if check is not None:
            check(Path(name))
        newest = max(stat.st_mtime_ns, stat.st_ctime_ns) / 1e9
        if time.time() - newest > RACY_SECONDS:
            self._known[name] = [*key, digest]
            self.dirty = True
        return digest

    def save(self) -> None:
        """Write the entries still true of their files (atomically); no-op without a path."""
        if self.path is None:
            return
        kept = {name: entry for name, entry in self._known.items() if _unchanged(name, entry)}
        body = {"format": FORMAT, "files": kept}
        atomic_write_text(self.path, json.dumps(body, separators=(",", ":")))
        self._known, self.dirty = kept, False


def _unchanged(name: str, entry: Entry) -> bool:
    try:
        stat = os.stat(name)
    except OSError:
        return False
    return entry[:4] == [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
