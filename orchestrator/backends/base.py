"""The interface every backend implements: submit units, report their scheduler state, cancel.

Backends receive units in topological order. A unit's dependencies are either already done
(in the store) or in the same submission; a backend must not start a unit before its
dependencies are done, and must not start it at all if one failed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Generic, TypeVar

from orchestrator.plan.profiles import LocalProfile, RayProfile, SlurmProfile
from orchestrator.plan.unit import Unit
from orchestrator.run.rundir import RunDir
from orchestrator.run.states import State

P = TypeVar("P", LocalProfile, SlurmProfile, RayProfile)  # the profile of a backend


class Backend(ABC, Generic[P]):
    """Runs units somewhere: this machine, a SLURM cluster, a Ray cluster; `profile` is the
    backend's own typed profile (orchestrator.plan.profiles)."""

    name: str = ""

    def __init__(self, profile: P):
        self.profile: P = profile

    @abstractmethod
    def submit(self, rundir: RunDir, units: list[Unit], wait: bool) -> None:
        """Start (or queue) `units`; record their job ids in the run dir."""

    @abstractmethod
    def states(self, rundir: RunDir) -> dict[str, State]:
        """unit id -> scheduler state (pending, running, failed, cancelled, completed: see
        orchestrator.run.states), for the units this run dir submitted here."""

    @abstractmethod
    def cancel(self, rundir: RunDir) -> list[str]:
        """Cancel this run dir's active units (nothing else); returns their ids."""

    def record_accounting(self, rundir: RunDir) -> None:
        """Store the scheduler's accounting of this run dir's attempts (`status`, `report`).
        Only SLURM keeps one; elsewhere the workers' own `resources` rows are all there is."""
