"""The one state vocabulary: what a scheduler says of a job, and what `status` says of a unit.

done      its result files are in the store, and its lineage holds (orchestrator.run.lineage)
running   the scheduler runs it now          pending   queued / waiting on a dependency
failed    it ran and failed (reason in units/<id>/failed.json) or the scheduler says so
blocked   a dependency failed, so it cannot run until that is fixed and re-launched
todo      not done and never submitted (or submitted and gone without a trace)

A backend reports its jobs as pending, running, failed, cancelled or completed
(`Backend.states`); `orchestrator.run.status.unit_states` turns those, the store (done) and
the run dir (failed) into a unit's state. One enum for both: a unit is running exactly when
its job is, so the words they share are one value, not two constants that must be kept
equal; cancelled and completed are scheduler words only (a unit is then failed, blocked,
done or todo), done, blocked and todo are unit words only. A `str` enum whose `str()` is its
value (what Python 3.11's StrEnum does; the project supports 3.10): JSON, f-strings, the
status table and launcher records read as plain strings did.
This module imports nothing else: a SLURM job's light modules use it (backends.slurm.jobs).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum


class State(str, Enum):
    DONE = "done"
    RUNNING = "running"
    PENDING = "pending"
    FAILED = "failed"
    BLOCKED = "blocked"
    TODO = "todo"
    CANCELLED = "cancelled"
    COMPLETED = "completed"

    def __str__(self) -> str:
        return self.value


ORDER = (State.DONE, State.RUNNING, State.PENDING, State.FAILED, State.BLOCKED, State.TODO)
ACTIVE = (State.PENDING, State.RUNNING)  # a job the scheduler still holds


def counts(states: Mapping[str, str]) -> dict[State, int]:
    """How many units are in each state, in ORDER."""
    return {state: sum(1 for s in states.values() if s == state) for state in ORDER}
