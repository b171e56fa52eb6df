"""A unit's state, from the store (done), the run dir (failed) and the scheduler (active).

done      its result files are in the store, and its lineage holds (orchestrator.run.lineage)
running   the scheduler runs it now          pending   queued / waiting on a dependency
failed    it ran and failed (reason in units/<id>/failed.json) or the scheduler says so
blocked   a dependency failed, so it cannot run until that is fixed and re-launched
todo      not done and never submitted (or submitted and gone without a trace)
"""

from __future__ import annotations

from fer_core.digest_cache import DigestCache
from orchestrator.backends.base import ACTIVE, CANCELLED, FAILED, Backend
from orchestrator.plan.dag import Unit, digest_cache_path
from orchestrator.run.lineage import stale_units
from orchestrator.run.rundir import RunDir

DONE, RUNNING, PENDING, FAILED_STATE, BLOCKED, TODO = (
    "done",
    "running",
    "pending",
    "failed",
    "blocked",
    "todo",
)
ORDER = (DONE, RUNNING, PENDING, FAILED_STATE, BLOCKED, TODO)


def unit_states(
    rundir: RunDir,
    units: list[Unit],
    backend: Backend | None,
    digests: DigestCache | None = None,
) -> dict[str, str]:
    """unit id -> state, for `units` in topological order. A stored result whose lineage no
    longer holds is not done. `digests`: the file-digest cache (default: the run dir's);
    digests it learns are saved, so the next `status` does not read the same files again."""
    scheduler = backend.states(rundir) if backend is not None else {}
    digests = digests or DigestCache(digest_cache_path(rundir.path))
    stale = stale_units(rundir, units, digests)
    if digests.dirty:
        digests.save()
    states: dict[str, str] = {}
    for unit in units:
        if unit.id not in stale and rundir.store.is_done(unit.id, unit.kind):
            states[unit.id] = DONE
        elif scheduler.get(unit.id) in ACTIVE:
            states[unit.id] = scheduler[unit.id]
        elif rundir.failure(unit.id) is not None or scheduler.get(unit.id) == FAILED:
            states[unit.id] = FAILED_STATE
        elif _blocked(unit, states, scheduler.get(unit.id)):
            states[unit.id] = BLOCKED
        else:
            states[unit.id] = TODO
    return states


def _blocked(unit: Unit, states: dict[str, str], scheduler_state: str | None) -> bool:
    """A dependency failed, or the scheduler cancelled the unit (kill-on-invalid-dep) while a
    dependency was not done."""
    if any(states.get(dep) in (FAILED_STATE, BLOCKED) for dep in unit.deps):
        return True
    return scheduler_state == CANCELLED and any(states.get(dep) != DONE for dep in unit.deps)


def counts(states: dict[str, str]) -> dict[str, int]:
    return {state: sum(1 for s in states.values() if s == state) for state in ORDER}
