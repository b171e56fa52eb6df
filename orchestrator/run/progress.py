"""Progress lines for long work: one line per finished unit, with a count and elapsed time.

Plain lines (not a redrawn bar) so that the same output reads well in a terminal, a CI log
and a SLURM log file.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from orchestrator.plan.dag import Unit
from orchestrator.run.rundir import RunDir


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None):
        self.total = total
        self.count = 0
        self.started = time.monotonic()
        self.stream = stream or sys.stdout

    def finished(self, unit: Unit, state: str, detail: str = "") -> None:
        self.count += 1
        elapsed = time.monotonic() - self.started
        width = len(str(self.total))
        line = f"[{self.count:>{width}}/{self.total}] {elapsed:6.1f}s {state:<7} {unit.name}"
        if detail:
            line += f"  {detail}"
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        elapsed = time.monotonic() - self.started
        print(f"{self.count} units finished in {elapsed:.1f}s", file=self.stream, flush=True)


def unit_summary(rundir: RunDir, unit: Unit) -> str:
    """A finished unit's headline: accuracy and best epoch, or its data preparation counts."""
    if unit.kind != "train":
        table = rundir.store.read("prepare", {unit.id})
        if table is None:
            return ""
        row = table.to_pylist()[0]
        if row["detector"] == "center":
            return f"{row['images']} images, centre crops (detector: center)"
        detected, fallback = row["detected"], row["fallback"]
        return f"{row['images']} images, {detected} faces detected, {fallback} fell back"
    table = rundir.store.read("runs", {unit.id})
    if table is None:
        return ""
    row = table.to_pylist()[0]
    return f"test acc {row['test_accuracy']:.3f}, best epoch {row['best_epoch']}"
