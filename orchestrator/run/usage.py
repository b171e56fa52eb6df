"""`status`'s cost lines: the GPU- and CPU-hours used so far, and the time to completion.

Used: every attempt of the current DAG's units (`resources`: elapsed x GPUs or CPUs, a
packed job's split between its units). Left: each unit not done, its epochs (a running
unit's remaining ones, from its live.json) times the mean epoch time measured in this run
for the same backbone and input size on the device that ran most of them, divided by the
units running now (at least one): a rough wall-clock figure that ignores queue wait and
start-up, and says for how many units it has no measurement.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from orchestrator.plan.unit import Unit
from orchestrator.run.epochcost import Measured, measured_epochs, unit_epochs, unit_shape
from orchestrator.run.resources import resource_rows
from orchestrator.run.rundir import RunDir
from orchestrator.run.states import State


@dataclass(frozen=True)
class Usage:
    gpu_hours: float
    cpu_hours: float
    attempts: int
    left_s: float  # training seconds of the measured units not done
    measured: int  # units not done that have a measurement
    unmeasured: int
    running: int

    def lines(self) -> list[str]:
        used = (
            f"used so far: {self.gpu_hours:.2f} GPU-hours, {self.cpu_hours:.2f} CPU-hours "
            f"over {self.attempts} attempts"
        )
        if not self.measured and not self.unmeasured:
            return [used]
        if not self.measured:
            return [used, f"time to completion: no measured epochs yet for {self.unmeasured} units"]
        parallel = max(self.running, 1)
        wall = self.left_s / parallel
        note = f"; {self.unmeasured} units without a measurement" if self.unmeasured else ""
        return [
            used,
            f"time to completion: ~{_hours(wall)} at {parallel} units at once "
            f"({_hours(self.left_s)} of training left for {self.measured} units{note}; "
            f"queue wait and start-up not included)",
        ]


def usage(rundir: RunDir, units: list[Unit], states: dict[str, State]) -> Usage:
    rows = resource_rows(rundir, {u.id for u in units})
    gpu_s = sum((r["elapsed_s"] or 0) * (r["gpus"] or 0) / r["units_in_job"] for r in rows)
    cpu_s = sum((r["elapsed_s"] or 0) * (r["cpus"] or 0) / r["units_in_job"] for r in rows)
    per_epoch = _per_epoch(measured_epochs([rundir.store]))
    left, measured, unmeasured = 0.0, 0, 0
    for unit in units:
        if unit.kind != "train" or states[unit.id] == State.DONE:
            continue
        shape = unit_shape(unit)
        if shape not in per_epoch:
            unmeasured += 1
            continue
        measured += 1
        epochs = unit_epochs(unit) - (
            _live_epoch(rundir, unit.id) if states[unit.id] == State.RUNNING else 0
        )
        left += max(epochs, 0) * per_epoch[shape]
    running = sum(1 for s in states.values() if s == State.RUNNING)
    return Usage(gpu_s / 3600, cpu_s / 3600, len(rows), left, measured, unmeasured, running)


def _per_epoch(measured: Measured) -> dict[tuple[str, int], float]:
    """Per shape, the mean of the device that ran most of its epochs in this run."""
    best: dict[tuple[str, int], tuple[int, float]] = {}
    for device, means in measured.per_device.items():
        for shape, seconds in means.items():
            count = measured.epochs[device][shape]
            if shape not in best or count > best[shape][0]:
                best[shape] = (count, seconds)
    return {shape: seconds for shape, (_, seconds) in best.items()}


def _live_epoch(rundir: RunDir, unit_id: str) -> int:
    try:
        return int(json.loads(rundir.live_path(unit_id).read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"
