"""Which packs of a submission go to SLURM together, as one job array (one `sbatch`).

A cluster asks for job arrays rather than one `sbatch` per job; but one array has one
`--dependency` for all its tasks. So packs (see `pack.py`; a pack is one unit when
`units_per_job` is 1) of one wave are grouped as follows:

- packs that wait on the same jobs (none; or one preparation job; or an earlier launch's
  jobs) form one array, `--dependency=afterok:<those jobs>`;
- a pack that alone waits on one pack of an earlier array P (a stage-2 unit on its own stage-1
  parent) joins the other such children of P in an array whose task i waits on task i of P:
  `--dependency=aftercorr:P`, SLURM's afterok per array task. The parents that have such a
  child are placed first in P, so the children's parents are P's tasks 0..m-1;
- anything else (a pack waiting on several packs, or the children of P when their parents
  are not P's first tasks) is an array of its own, waiting on exactly its parents' tasks
  (`afterok:<P>_<i>`).

Packs whose jobs ask for different resources (`resources:` per unit kind and backbone of a
slurm profile: a preparation job without a GPU, a longer time for a large backbone) never
share an array: `resource_class` tells them apart.

Arrays hold at most `max_size` tasks (the cluster's MaxArraySize). The plan is data only: the
backend submits it, and `launch --dry-run` prints it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

from orchestrator.backends.slurm.pack import Pack


@dataclass(frozen=True)
class Array:
    """Packs submitted by one `sbatch`; task i runs `packs[i]`."""

    packs: tuple[Pack, ...]
    wave: int
    after: tuple[tuple[int, int], ...]  # (array, task) of this plan that every task waits on
    external: tuple[str, ...]  # job ids outside the plan that every task waits on
    corr: int | None = None  # task i waits on task i of this plan's array `corr`


def plan_arrays(
    packs: list[Pack],
    max_size: int | None = None,
    resource_class: Callable[[Pack], Hashable] = lambda pack: None,
) -> list[Array]:
    """`packs` (parents first, as `plan_packs` returns them) as arrays, parents' arrays first;
    packs of one array have the same `resource_class`."""
    limit = max_size or len(packs) or 1
    wave: list[int] = []
    for pack in packs:
        wave.append(1 + max((wave[p] for p in pack.parents), default=-1))
    keys = [(pack.parents, pack.external, resource_class(pack)) for pack in packs]
    shared = {key: keys.count(key) for key in keys}
    corr_parent = {
        i: pack.parents[0]
        for i, pack in enumerate(packs)
        if shared[keys[i]] == 1 and len(pack.parents) == 1 and not pack.external
    }
    has_corr_child = set(corr_parent.values())
    arrays: list[Array] = []
    where: dict[int, tuple[int, int]] = {}  # pack -> (array, task)

    def add(members: list[int], after: tuple[tuple[int, int], ...], ext, corr=None) -> None:
        for start in range(0, len(members), limit):
            chunk = members[start : start + limit]
            arrays.append(Array(tuple(packs[i] for i in chunk), wave[chunk[0]], after, ext, corr))
            where.update({i: (len(arrays) - 1, t) for t, i in enumerate(chunk)})

    for current in range(max(wave, default=-1) + 1):
        members = [i for i in range(len(packs)) if wave[i] == current]
        groups: dict[tuple, list[int]] = {}
        for i in members:
            if i not in corr_parent:
                groups.setdefault(keys[i], []).append(i)
        for (parents, external, _), group in groups.items():
            group.sort(key=lambda i: i not in has_corr_child)  # stable: parents of children first
            add(group, tuple(where[p] for p in parents), external)
        by_parent_array: dict[tuple[int, Hashable], list[int]] = {}
        for i in members:
            if i in corr_parent:
                parent = (where[corr_parent[i]][0], keys[i][2])
                by_parent_array.setdefault(parent, []).append(i)
        for (parent_array, _), children in by_parent_array.items():
            children.sort(key=lambda i: where[corr_parent[i]][1])
            if [where[corr_parent[i]][1] for i in children] == list(range(len(children))):
                add(children, (), (), parent_array)
            else:
                for i in children:
                    add([i], (where[corr_parent[i]],), ())
    return arrays


def dependency_of(array: Array, arrays: list[Array], ids: list[str]) -> str:
    """`--dependency` of `array`, given the job ids of the arrays before it (a one-task array
    is a plain job: its id has no task index)."""

    def task(a: int, t: int) -> str:
        return ids[a] if len(arrays[a].packs) == 1 else f"{ids[a]}_{t}"

    if array.corr is not None:
        if len(array.packs) == 1:
            return f"afterok:{task(array.corr, 0)}"
        return f"aftercorr:{ids[array.corr]}"
    jobs = [task(a, t) for a, t in array.after] + list(array.external)
    return "afterok:" + ":".join(jobs) if jobs else ""
