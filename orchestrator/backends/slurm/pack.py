"""Which units of a submission share one SLURM job (`units_per_job: k` of a slurm profile).

A cluster that hands out whole GPUs leaves most of one idle under a small unit; a pack runs k
units as k parallel processes of one job, sharing its GPU(s) and CPUs. Which units share:

- units of one wave only. A unit's wave is 0 when none of its dependencies is in the
  submission, else one more than its deepest such dependency's: a unit is never packed with
  its own parent (or anything that must finish before it), and a pack's units can start
  together;
- within a wave, units that wait on the same jobs first (their parents' packs, or jobs of an
  earlier launch), so the stage-2 children of one stage-1 pack travel together and their
  pack depends on that one job. What is left over is packed with the wave's other leftovers;
  such a pack waits for the jobs of all its units' parents.

With k = 1 every unit is a pack of its own, in submission order.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.backends.slurm.jobs import job_key
from orchestrator.plan.unit import Unit


@dataclass(frozen=True)
class Pack:
    """Units that share one SLURM job, and the jobs that job must wait for (afterok)."""

    units: tuple[Unit, ...]
    parents: tuple[int, ...]  # indexes of earlier packs of the same plan
    external: tuple[str, ...]  # job ids (`A_i`) outside the plan: earlier launches, adopted


def plan_packs(units: list[Unit], per_job: int, known_jobs: dict[str, str]) -> list[Pack]:
    """`units` (topological order) in packs of at most `per_job`, every pack after its parents.

    A dependency among `units` makes a unit wait for that unit's pack; one in `known_jobs`
    (unit id -> job id) for that job; any other dependency is done.
    """
    pack_of: dict[str, int] = {}
    packs: list[Pack] = []
    # k = 1: one pack per unit, in submission order (topological, so parents come first).
    waves = [units] if per_job == 1 else _waves(units)
    for wave in waves:  # a wave is cut once every earlier wave's packs are numbered
        for chunk in _chunks(wave, per_job, pack_of, known_jobs):
            packs.append(_pack(chunk, pack_of, known_jobs))
            pack_of.update(dict.fromkeys((u.id for u in chunk), len(packs) - 1))
    return packs


def _waves(units: list[Unit]) -> list[list[Unit]]:
    """Units by wave (see the module docstring), each wave in submission order."""
    ids = {unit.id for unit in units}
    wave: dict[str, int] = {}
    for unit in units:
        wave[unit.id] = 1 + max((wave[dep] for dep in unit.deps if dep in ids), default=-1)
    waves: list[list[Unit]] = [[] for _ in range(max(wave.values(), default=-1) + 1)]
    for unit in units:
        waves[wave[unit.id]].append(unit)
    return waves


def _chunks(
    wave: list[Unit], per_job: int, pack_of: dict[str, int], known_jobs: dict[str, str]
) -> list[list[Unit]]:
    """One wave cut into packs: full packs of units that wait on the same jobs, then the
    leftovers of all those groups together."""
    if per_job == 1:
        return [[unit] for unit in wave]
    groups: dict[tuple, list[Unit]] = {}
    for unit in wave:
        groups.setdefault(_waits_on([unit], pack_of, known_jobs), []).append(unit)
    chunks: list[list[Unit]] = []
    leftovers: list[Unit] = []
    for members in groups.values():
        full = len(members) - len(members) % per_job
        chunks += [members[i : i + per_job] for i in range(0, full, per_job)]
        leftovers += members[full:]
    chunks += [leftovers[i : i + per_job] for i in range(0, len(leftovers), per_job)]
    return chunks


def _waits_on(
    chunk: list[Unit], pack_of: dict[str, int], known_jobs: dict[str, str]
) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The packs of this plan and the outside jobs that `chunk`'s dependencies run in."""
    deps = {dep for unit in chunk for dep in unit.deps}
    parents = sorted({pack_of[dep] for dep in deps if dep in pack_of})
    external = {known_jobs[dep] for dep in deps if dep in known_jobs and dep not in pack_of}
    return tuple(parents), tuple(sorted(external, key=job_key))


def _pack(chunk: list[Unit], pack_of: dict[str, int], known_jobs: dict[str, str]) -> Pack:
    parents, external = _waits_on(chunk, pack_of, known_jobs)
    return Pack(tuple(chunk), parents, external)
