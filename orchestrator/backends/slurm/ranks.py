"""The ranks (SLURM tasks) and the whole-job resources of a SLURM job: what `job_parameters`
asks for, and what the dry run and the report's cost section count (a multi-rank unit holds
the GPUs of all its nodes and the CPUs of all its tasks). Imports nothing heavy: the report
reads it.
"""

from __future__ import annotations

from orchestrator.plan.profiles import SlurmProfile, UnitRanks
from orchestrator.plan.unit import Unit


def job_ranks(profile: SlurmProfile, tasks: list[tuple[Unit, ...]]) -> UnitRanks:
    """The ranks of each task of an array (tasks of one array share their unit kind and
    backbone, so their ranks too; a pack's units are one process each)."""
    units = [unit for pack in tasks for unit in pack]
    if any(len(pack) > 1 for pack in tasks):
        return UnitRanks()
    return max((profile.unit_ranks(unit) for unit in units), key=lambda r: r.world)


def job_totals(profile: SlurmProfile, units: tuple[Unit, ...] | list[Unit]) -> tuple[int, int]:
    """(GPUs, CPUs) of the whole job running `units`: a multi-rank unit's GPUs on each of its
    nodes, its CPUs for each of its ranks."""
    need = profile.resources_for(units)
    ranks = job_ranks(profile, [tuple(units)])
    return need.gpus * ranks.nodes, need.cpus * ranks.world
