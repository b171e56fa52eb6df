"""Measured epoch times, for honest estimates of what units not run yet will cost.

An epoch's time depends on the backbone, the input size and the device, so a measurement
counts only for units with the same three: `launch --dry-run --cluster slurm` and `status`
never turn epochs timed on a CPU into GPU-hours, nor a ResNet-18 at 224 px into an
Inception-v3 at 299 px. The device of a measurement is the `runs.device` of its unit (`cpu`,
or the CUDA device's name); a job with GPUs runs on some GPU, one without on CPUs. A unit
that trained as several ranks (D-24) timed its epochs on that many devices together: its
device is named with its rank count (`cpu (2 ranks)`) and counts only for units of as many.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import mean

from orchestrator.plan.unit import Unit
from orchestrator.run.store import Store

Shape = tuple[str, int]  # (backbone, input size): what an epoch's time depends on, device aside


@dataclass(frozen=True)
class Measured:
    """Mean seconds per training epoch by device name and (backbone, input size)."""

    per_device: dict[str, dict[Shape, float]]
    epochs: dict[str, dict[Shape, int]]  # how many epochs each mean is of

    def devices(self, gpu: bool, world: int = 1) -> list[str]:
        """The device names of one kind, GPUs (any name but `cpu`) or the CPU, measured by
        units of `world` ranks."""
        found = [d for d in self.per_device if device_world(d) == world]
        return sorted(d for d in found if (d.partition(RANKS)[0] != "cpu") == gpu)


RANKS = " ("  # `cpu (2 ranks)`: the device of a unit of 2 ranks


def device_label(device: str, world: int) -> str:
    return device if world <= 1 else f"{device}{RANKS}{world} ranks)"


def device_world(label: str) -> int:
    """The ranks of a `device_label` (1 for a plain device name)."""
    _, sep, rest = label.rpartition(RANKS)
    return int(rest.split()[0]) if sep and rest.endswith(" ranks)") else 1


def measured_epochs(stores: list[Store]) -> Measured:
    """The epochs of the `runs` units of `stores` (this run dir's, earlier run dirs'), by the
    device, backbone and input size that produced them."""
    times: dict[str, dict[Shape, list[float]]] = {}
    for store in stores:
        runs, epochs = store.read("runs"), store.read("epochs")
        if runs is None or epochs is None:
            continue
        names = set(runs.column_names)
        if not {"backbone", "input_size", "device"} <= names:
            continue
        columns = ["unit_id", "backbone", "input_size", "device"]
        columns += ["world_size"] if "world_size" in names else []
        shape = {
            row["unit_id"]: (
                device_label(str(row["device"]), int(row.get("world_size") or 1)),
                (str(row["backbone"]), int(row["input_size"])),
            )
            for row in runs.select(columns).to_pylist()
        }
        for row in epochs.select(["unit_id", "seconds"]).to_pylist():
            if row["unit_id"] in shape and row["seconds"] is not None:
                device, key = shape[row["unit_id"]]
                times.setdefault(device, {}).setdefault(key, []).append(float(row["seconds"]))
    return Measured(
        {d: {k: mean(v) for k, v in by.items()} for d, by in times.items()},
        {d: {k: len(v) for k, v in by.items()} for d, by in times.items()},
    )


def unit_shape(unit: Unit) -> Shape:
    return unit.backbone, int(unit.spec["input_size"])


def unit_epochs(unit: Unit) -> int:
    return int(unit.spec["config"]["epochs"])


def estimate_seconds(units: list[Unit], per_epoch: dict[Shape, float]) -> tuple[float, list[Unit]]:
    """Training seconds of the `units` whose shape was measured (epochs x mean epoch time),
    and those units; start-up and evaluation are not in it."""
    known = [u for u in units if u.kind == "train" and unit_shape(u) in per_epoch]
    return sum(per_epoch[unit_shape(u)] * unit_epochs(u) for u in known), known


def shape_label(shape: Shape) -> str:
    return f"{shape[0]}@{shape[1]}px"
