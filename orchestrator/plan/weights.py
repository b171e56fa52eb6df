"""Pre-flight: every backbone's weights file exists before anything is created or submitted.

A missing pre-trained file used to surface only when a unit started (after the grid had been
accepted and jobs queued), once per unit. `launch` checks here first, without reading the
files (existence only: loading is the unit's job, strictly, via `fer_core.models.weights`).
"""

from __future__ import annotations

from fer_core.errors import FerError
from fer_core.models.weights import check_weights
from orchestrator.plan.grid import Grid


def missing_weights(grid: Grid) -> list[str]:
    """One line per backbone used by an experiment whose weights file is missing: the
    backbone, the exact path expected and how to produce the file."""
    used = dict.fromkeys(name for e in grid.experiments for name in e.backbones)
    problems = []
    for name in used:
        try:
            check_weights(name, grid.backbones[name].weights)
        except FerError as exc:
            problems.append(str(exc))
    return problems


def require_weights(grid: Grid) -> None:
    """Raise the first missing file as a one-line FerError (`--dry-run` lists them all)."""
    problems = missing_weights(grid)
    if problems:
        more = f" (+{len(problems) - 1} more; --dry-run lists them)" if len(problems) > 1 else ""
        raise FerError(problems[0] + more)
