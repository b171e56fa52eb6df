"""`launch --dry-run --cluster slurm`: the jobs a cluster user would see, before any sbatch.

Per wave, each job array (one `sbatch`) with its task count, its own sbatch parameters
(`--array`, `--job-name`, `--dependency` naming the plan's arrays A1, A2...) and its first
units; the parameters every job shares once; the GPU-hours requested at the profile's
`time_min`; and, when the run dir's store holds measured epochs, an estimate of the
GPU-hours the units will use (mean seconds per epoch of each backbone x the unit's epochs).
Nothing here asks the cluster: its MaxArraySize and submission limits are applied at launch.
"""

from __future__ import annotations

from statistics import mean
from typing import Any, TextIO

from orchestrator.backends.slurm.arrays import dependency_of, plan_arrays
from orchestrator.backends.slurm.backend import job_parameters
from orchestrator.backends.slurm.pack import plan_packs
from orchestrator.plan.profiles import SlurmProfile
from orchestrator.plan.unit import Unit
from orchestrator.run.rundir import RunDir

PER_ARRAY = ("job_name", "comment", "stderr_to_stdout", "array_parallelism", "setup")


def print_slurm_plan(profile: SlurmProfile, rundir: RunDir, units: list[Unit], out: TextIO):
    """The plan for `units` (those not done, topological order)."""
    if not units:
        print("  slurm: nothing to submit", file=out)
        return
    packs = plan_packs(units, profile.units_per_job, {})
    arrays = plan_arrays(packs)
    names = [f"A{i + 1}" for i in range(len(arrays))]
    shared = job_parameters(profile, rundir, [packs[0].units], "", "KEY")
    print(
        f"  slurm: {len(arrays)} sbatch calls (job arrays) for {len(units)} units in "
        f"{len(packs)} tasks; one job per task would take {len(packs)}",
        file=out,
    )
    print(
        "  every job: " + _flags({k: v for k, v in shared.items() if k not in PER_ARRAY}), file=out
    )
    parallel = profile.array_parallelism
    for name, array in zip(names, arrays, strict=True):
        tasks = [pack.units for pack in array.packs]
        own = job_parameters(profile, rundir, tasks, dependency_of(array, arrays, names), "KEY")
        flags = {
            "job_name": own["job_name"],
            **({"dependency": own["dependency"]} if "dependency" in own else {}),
        }
        if len(tasks) > 1:
            throttle = f"%{min(parallel, len(tasks))}" if parallel else ""
            flags = {"array": f"0-{len(tasks) - 1}{throttle}", **flags}
        first = ", ".join(u.name for u in tasks[0])
        more = f" ... ({sum(map(len, tasks))} units)" if len(tasks) > 1 else ""
        print(f"    wave {array.wave} {name}: {_flags(flags)}  [{first}{more}]", file=out)
    gpus = profile.gpus_per_job
    hours = len(packs) * gpus * profile.time_min / 60
    print(
        f"  requested: {len(packs)} jobs x {gpus} GPU x {profile.time_min} min = "
        f"{hours:.1f} GPU-hours (the most the cluster will charge)",
        file=out,
    )
    _print_estimate(profile, rundir, units, len(packs), out)


def _print_estimate(
    profile: SlurmProfile, rundir: RunDir, units: list[Unit], jobs: int, out: TextIO
) -> None:
    epochs, runs = rundir.store.read("epochs"), rundir.store.read("runs")
    if epochs is None or runs is None:
        print("  estimate: no measured epochs in this run dir's store yet", file=out)
        return
    backbone = dict(zip(runs["unit_id"].to_pylist(), runs["backbone"].to_pylist(), strict=True))
    per_backbone: dict[str, list[float]] = {}
    for unit_id, seconds in zip(
        epochs["unit_id"].to_pylist(), epochs["seconds"].to_pylist(), strict=True
    ):
        if unit_id in backbone and seconds is not None:
            per_backbone.setdefault(str(backbone[unit_id]), []).append(seconds)
    measured = [u for u in units if u.kind == "train" and u.backbone in per_backbone]
    seconds = sum(mean(per_backbone[u.backbone]) * u.spec["config"]["epochs"] for u in measured)
    gpus = profile.gpus_per_job / profile.units_per_job
    print(
        f"  estimate from measured epochs ({', '.join(sorted(per_backbone))}): "
        f"{seconds / 3600:.2f} unit-hours of training, {seconds * gpus / 3600:.2f} GPU-hours, "
        f"for {len(measured)} of the {len(units)} units (start-up and evaluation not included)",
        file=out,
    )


def _flags(params: dict[str, Any]) -> str:
    """submitit parameters as the sbatch flags they become."""
    params = dict(params)
    params.update(params.pop("additional_parameters", {}))
    return " ".join(f"--{key.replace('_', '-')}={value}" for key, value in params.items())
