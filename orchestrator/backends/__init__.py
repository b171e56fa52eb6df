"""Backends by profile type; each imported only when used (Ray and submitit are heavy imports)."""

from __future__ import annotations

from typing import Any

from orchestrator.backends.base import Backend
from orchestrator.plan.profiles import LocalProfile, Profile, SlurmProfile


def make_backend(profile: Profile) -> Backend[Any]:
    """The backend a validated profile asks for."""
    if isinstance(profile, LocalProfile):
        from orchestrator.backends.local import LocalBackend

        return LocalBackend(profile)
    if isinstance(profile, SlurmProfile):
        from orchestrator.backends.slurm.backend import SlurmBackend

        return SlurmBackend(profile)
    from orchestrator.backends.ray.backend import RayBackend

    return RayBackend(profile)
