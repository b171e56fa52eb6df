"""The results store: Parquet files under `RUN_DIR/store/<table>/<unit id>.parquet`.

One file per finished unit and table, each written atomically (temp + rename), so a reader
sees a unit's rows completely or not at all, and re-running a unit replaces its rows instead
of duplicating them. The `runs` file is written last: its presence is what "done" means.
A file that is not a whole Parquet file (truncated by a crash of an older, non-atomic
version, or damaged after the fact) is invisible to readers and does not count as done,
so the unit runs again and replaces it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fer_core.errors import FerError
from fer_core.io import atomic_write_bytes, is_temp_file

TABLES = ("runs", "predictions", "epochs", "prepare", "trials", "resources", "accounting")
DONE_TABLE = {"train": "runs", "trial": "runs", "prepare": "prepare"}  # unit kind -> table


class Store:
    """Read and write the per-unit Parquet files of one run directory."""

    def __init__(self, run_dir: Path):
        self.root = Path(run_dir) / "store"

    def path(self, table: str, unit_id: str) -> Path:
        return self.root / table / f"{unit_id}.parquet"

    def write(self, table: str, unit_id: str, rows: Sequence[Mapping[str, object]]) -> Path:
        """Replace `unit_id`'s rows of `table` atomically."""
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist([dict(row) for row in rows]), buffer)
        path = self.path(table, unit_id)
        atomic_write_bytes(path, buffer.getvalue())
        return path

    def append(self, table: str, unit_id: str, row: Mapping[str, object]) -> Path:
        """Add one attempt's row to `unit_id`'s rows of `table` (replacing a row of the same
        job and requeue), atomically. One attempt of a unit runs at a time, so there is one
        writer per file."""
        path = self.path(table, unit_id)
        rows = _read(path).to_pylist() if is_whole_parquet(path) else []
        key = (row.get("job_id"), row.get("requeue"))
        rows = [r for r in rows if (r.get("job_id"), r.get("requeue")) != key] + [dict(row)]
        return self.write(table, unit_id, rows)

    def write_unit(
        self,
        unit_id: str,
        run: Mapping[str, object],
        predictions: Sequence[Mapping[str, object]],
        epochs: Sequence[Mapping[str, object]],
    ) -> None:
        """Store a training unit's result; `runs` last, so done implies complete. A unit that
        scored no test images (a tune trial) has no predictions file."""
        if predictions:
            self.write("predictions", unit_id, predictions)
        self.write("epochs", unit_id, epochs)
        self.write("runs", unit_id, [run])

    def files(self, table: str) -> list[Path]:
        folder = self.root / table
        if not folder.is_dir():
            return []
        return sorted(
            p for p in folder.glob("*.parquet") if not is_temp_file(p) and is_whole_parquet(p)
        )

    def done_ids(self, kind: str = "train") -> set[str]:
        return {p.stem for p in self.files(DONE_TABLE[kind])}

    def is_done(self, unit_id: str, kind: str) -> bool:
        return is_whole_parquet(self.path(DONE_TABLE[kind], unit_id))

    def read(self, table: str, unit_ids: set[str] | None = None) -> pa.Table | None:
        """All rows of `table` (restricted to `unit_ids` if given), or None when empty."""
        paths = [p for p in self.files(table) if unit_ids is None or p.stem in unit_ids]
        if not paths:
            return None
        return pa.concat_tables([_read(p) for p in paths], promote_options="default")


PARQUET_MAGIC = b"PAR1"


def is_whole_parquet(path: Path) -> bool:
    """True if `path` is a file that starts and ends like a complete Parquet file (cheap:
    reads 12 bytes). A truncated file loses its footer and its closing magic."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
            size = os.fstat(handle.fileno()).st_size
            if size < 12 or head != PARQUET_MAGIC:
                return False
            handle.seek(size - 8)
            tail = handle.read(8)
    except OSError:
        return False
    footer = int.from_bytes(tail[:4], "little")
    return tail[4:] == PARQUET_MAGIC and footer <= size - 12


def _read(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise FerError(
            f"{path}: not a readable Parquet file ({type(exc).__name__}); delete it and "
            "re-launch to recompute that unit"
        ) from exc
