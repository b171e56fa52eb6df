"""Backends by name; each imported only when used (Ray and submitit are heavy imports)."""

from __future__ import annotations

from typing import Any

from orchestrator.backends.base import Backend


def make_backend(profile: dict[str, Any]) -> Backend:
    """The backend a validated profile asks for."""
    name = profile["backend"]
    settings = {k: v for k, v in profile.items() if k != "backend"}
    if name == "local":
        from orchestrator.backends.local import LocalBackend

        return LocalBackend(settings)
    if name == "slurm":
        from orchestrator.backends.slurm.backend import SlurmBackend

        return SlurmBackend(settings)
    from orchestrator.backends.ray.backend import RayBackend

    return RayBackend(settings)
