"""TensorBoard event files: per-epoch scalars of every unit, for `tensorboard --logdir`.

Each unit writes one TensorBoard run under `RUN_DIR/tensorboard/`, at the same readable path
as its `by-label/` alias (`ckplus/tiny/ce-focal/f01/seed0`, plus swept values when a sweep
varies them), so TensorBoard's run selector reads dataset/backbone/strategy/fold/seed; tune
trials write under `RUN_DIR/tensorboard/tune/<trial>/split-<k>`. Scalars, per epoch:
`train/loss`, `train/accuracy`, `selection/accuracy`, `lr`.

The event file format is TensorFlow's record format (length, masked CRC-32C, an `Event`
protocol buffer, masked CRC-32C), written here with TensorBoard's own `Event`/`Summary`
messages and a small CRC-32C: importing `tensorboard.summary` costs ~0.4 s of a 2-core
machine per process, more than a demo unit's epoch. A resumed unit appends a new event file
(TensorBoard merges the files of a run by step).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary

SCALARS = {
    "train_loss": "train/loss",
    "train_accuracy": "train/accuracy",
    "selection_accuracy": "selection/accuracy",
    "lr": "lr",
}


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _record(event: Event) -> bytes:
    data = event.SerializeToString()
    header = struct.pack("<Q", len(data))
    return (
        header
        + struct.pack("<I", _masked_crc32c(header))
        + data
        + struct.pack("<I", _masked_crc32c(data))
    )


class EventWriter:
    """Appends scalar events to one new event file in `logdir` (created on first use)."""

    def __init__(self, logdir: Path):
        self.logdir = Path(logdir)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = self.logdir / name

    def _append(self, event: Event) -> None:
        new = not self.path.exists()
        if new:
            self.logdir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as handle:
            if new:
                handle.write(_record(Event(wall_time=time.time(), file_version="brain.Event:2")))
            handle.write(_record(event))

    def epoch(self, record: Mapping[str, Any]) -> None:
        """The scalars of one epoch record (`fer_core.train` history), at step = epoch."""
        values = [
            Summary.Value(tag=tag, simple_value=float(record[key]))
            for key, tag in SCALARS.items()
            if record.get(key) is not None
        ]
        wall = float(record.get("finished_at") or time.time())
        self._append(
            Event(wall_time=wall, step=int(record["epoch"]), summary=Summary(value=values))
        )
