"""`launch --dry-run --cluster slurm`: the jobs a cluster user would see, before any sbatch.

Per wave, each job array (one `sbatch`) with its task count, its own sbatch parameters
(`--array`, `--job-name`, `--dependency` naming the plan's arrays A1, A2..., and the
resources where its unit kind or backbone has its own) and its first units; the parameters
every training job shares once; the GPU- and CPU-hours requested at each job's `--time`,
labelled as the upper bound it is (a multi-rank unit's job counts the GPUs of all its nodes
and the CPUs of all its tasks); and an estimate of the GPU-hours (CPU-hours for jobs
without a GPU) from epochs measured on that kind of device with the same backbone and input
size (`orchestrator.run.epochcost`), in this run dir or those given by `--estimate-from`,
one line per measured device, times the GPUs (CPUs) a unit holds; "no measurement on this
device" otherwise. A multi-rank unit's job shows its `--nodes` and `--ntasks-per-node` (one
task per rank) and the srun flag that ends it with its first failed rank.
Nothing here asks the cluster: its MaxArraySize and submission limits are applied at launch.
"""

from __future__ import annotations

from typing import Any, TextIO

from orchestrator.backends.slurm.arrays import dependency_of, plan_arrays
from orchestrator.backends.slurm.backend import job_parameters
from orchestrator.backends.slurm.pack import Pack, plan_packs
from orchestrator.backends.slurm.ranks import job_ranks, job_totals
from orchestrator.plan.profiles import SlurmProfile
from orchestrator.plan.unit import Unit
from orchestrator.run.epochcost import (
    Measured,
    estimate_seconds,
    shape_label,
    unit_epochs,
    unit_shape,
)
from orchestrator.run.rundir import RunDir

PER_ARRAY = ("job_name", "comment", "stderr_to_stdout", "array_parallelism", "setup")


def print_slurm_plan(
    profile: SlurmProfile,
    rundir: RunDir,
    units: list[Unit],
    out: TextIO,
    measured: Measured,
):
    """The plan for `units` (those not done, topological order); `measured`: the epoch
    times of this run dir and of the `--estimate-from` run dirs."""
    if not units:
        print("  slurm: nothing to submit", file=out)
        return
    packs = plan_packs(units, profile.units_per_job, {})
    arrays = plan_arrays(
        packs,
        None,
        lambda pack: (profile.resources_for(pack.units), job_ranks(profile, [pack.units])),
    )
    names = [f"A{i + 1}" for i in range(len(arrays))]
    shared = job_parameters(profile, rundir, [packs[-1].units], "", "KEY")
    print(
        f"  slurm: {len(arrays)} sbatch calls (job arrays) for {len(units)} units in "
        f"{len(packs)} tasks; one job per task would take {len(packs)}",
        file=out,
    )
    print(
        "  every job (unless its array says otherwise): "
        + _flags({k: v for k, v in shared.items() if k not in PER_ARRAY}),
        file=out,
    )
    _print_ranks(profile, units, out)
    parallel = profile.array_parallelism
    for name, array in zip(names, arrays, strict=True):
        tasks = [pack.units for pack in array.packs]
        own = job_parameters(profile, rundir, tasks, dependency_of(array, arrays, names), "KEY")
        differs = [
            k
            for k in shared
            if k not in (*PER_ARRAY, "additional_parameters", "srun_args")
            and own.get(k) != shared[k]
        ]
        flags = {
            **{k: own[k] for k in differs if k in own},
            "job_name": own["job_name"],
            **({"dependency": own["dependency"]} if "dependency" in own else {}),
        }
        if len(tasks) > 1:
            throttle = f"%{min(parallel, len(tasks))}" if parallel else ""
            flags = {"array": f"0-{len(tasks) - 1}{throttle}", **flags}
        first = ", ".join(u.name for u in tasks[0])
        more = f" ... ({sum(map(len, tasks))} units)" if len(tasks) > 1 else ""
        # a flag every other job has but this array does not (a preparation job's GPU)
        dropped = "".join(f" (no --{k.replace('_', '-')})" for k in differs if k not in own)
        print(f"    wave {array.wave} {name}: {_flags(flags)}{dropped}  [{first}{more}]", file=out)
    _print_requested(profile, packs, out)
    _print_estimate(profile, units, measured, out)


def _print_ranks(profile: SlurmProfile, units: list[Unit], out: TextIO) -> None:
    """How a multi-rank training unit is laid out, when the profile makes one."""
    trainings = [u for u in units if u.kind == "train"]
    if not trainings:
        return
    ranks = profile.unit_ranks(trainings[0])
    if ranks.world == 1:
        return
    gpus, cpus = job_totals(profile, [trainings[0]])
    each = f"one GPU each, {gpus} GPUs" if ranks.gpu and gpus else f"{cpus} CPUs"
    group = "NCCL" if ranks.gpu and gpus else "gloo"
    print(
        f"  data-parallel: each training unit is one job of {ranks.world} ranks (SLURM tasks) "
        f"on {ranks.nodes} node(s), {ranks.per_node} per node ({each} in all, {group}); "
        f"the job ends with its first failed rank",
        file=out,
    )


def _print_requested(profile: SlurmProfile, packs: list[Pack], out: TextIO) -> None:
    """The `--time` upper bound: what the jobs ask for, the most the cluster will charge."""
    needs = [(profile.resources_for(pack.units), job_totals(profile, pack.units)) for pack in packs]
    gpu_hours = sum(gpus * n.time_min for n, (gpus, _) in needs) / 60
    cpu_hours = sum(cpus * n.time_min for n, (_, cpus) in needs) / 60
    with_gpu = sum(1 for _, (gpus, _) in needs if gpus)
    print(
        f"  requested (upper bound, every job at its --time): {gpu_hours:.1f} GPU-hours "
        f"({with_gpu} of {len(needs)} jobs with GPUs), {cpu_hours:.1f} CPU-hours; "
        f"the most the cluster will charge, not an estimate",
        file=out,
    )


def _print_estimate(
    profile: SlurmProfile, units: list[Unit], measured: Measured, out: TextIO
) -> None:
    """GPU-hours (CPU-hours for jobs without GPUs) of the training units from epochs measured
    on the same kind of device with the same backbone and input size; never across kinds."""
    trainings = [u for u in units if u.kind == "train"]
    gpu_units = [u for u in trainings if profile.resources_for([u]).gpus]
    for gpu, group in ((True, gpu_units), (False, [u for u in trainings if u not in gpu_units])):
        if not group:
            continue
        kind = "GPU" if gpu else "CPU"
        devices = measured.devices(gpu)
        if not devices:
            print(
                f"  estimate: no measurement on this device ({kind}) for {len(group)} training "
                f"units; give --estimate-from RUN_DIR of a run on that kind of device",
                file=out,
            )
            continue
        for device in devices:
            seconds, known = estimate_seconds(group, measured.per_device[device])
            hours = sum(
                measured.per_device[device][unit_shape(u)]
                * unit_epochs(u)
                * _share(profile, u, gpu)
                for u in known
            )
            shapes = sorted({unit_shape(u) for u in known})
            used = ", ".join(
                f"{shape_label(s)} {measured.per_device[device][s]:.2f} s/epoch "
                f"({measured.epochs[device][s]} epochs)"
                for s in shapes
            )
            missing = sorted({shape_label(unit_shape(u)) for u in group if u not in known})
            print(
                f"  estimate on {device}: {hours / 3600:.2f} {kind}-hours ({seconds / 3600:.2f} "
                f"unit-hours of training) for {len(known)} of {len(group)} training units"
                + (f"; from {used}" if used else "")
                + (f"; no measurement on this device for {', '.join(missing)}" if missing else "")
                + " (start-up and evaluation not included)",
                file=out,
            )


def _share(profile: SlurmProfile, unit: Unit, gpu: bool) -> float:
    """The GPUs (CPUs) one unit holds: its job's (every node's, every rank's), split between
    the units of a pack."""
    gpus, cpus = job_totals(profile, [unit])
    return (gpus if gpu else cpus) / profile.units_per_job


def _flags(params: dict[str, Any]) -> str:
    """submitit parameters as the sbatch flags they become (srun's after `srun`)."""
    params = dict(params)
    params.update(params.pop("additional_parameters", {}))
    srun = params.pop("srun_args", [])
    flags = " ".join(f"--{key.replace('_', '-')}={value}" for key, value in params.items())
    return flags + (f" (srun {' '.join(srun)})" if srun else "")
