"""Whether a done training unit's result still stands: its weights and its parent's are the
ones its result came from.

A done unit is stale when
- its `best.pt` is missing, unreadable, not the file its training recorded in
  `checkpoints.json` (swapped, damaged), or not a whole checkpoint archive (damaged with its
  record edited to match): its children could not start from it;
- its parent is stale or not done (the parent trains again, so its weights will change);
- its parent's recorded `best.pt` digest is not the one it started from (`runs.
  parent_best_sha`): the parent was retrained since.
A stale unit counts as not done (`orchestrator.run.states`), and `launch` clears its result
and work dir before running it again, so nothing of the old run is resumed or kept as current.
Checked at any chain depth, in topological order. File digests come from a `DigestCache`, so
an unchanged `best.pt` is not re-read at every `launch` or `status`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

import pyarrow.parquet as pq

from fer_core.checkpoints import BEST, DIGESTS, check_archive, recorded_digests
from fer_core.digest_cache import DigestCache
from fer_core.errors import FerError
from fer_core.io import sha256_file
from orchestrator.plan.unit import Unit
from orchestrator.run.rundir import RunDir


def stale_units(rundir: RunDir, units: list[Unit], digests: DigestCache) -> dict[str, str]:
    """unit id -> why its stored result no longer stands, for done training units."""
    stale: dict[str, str] = {}
    done = rundir.store.done_ids("train")
    for unit in units:
        if unit.kind != "train" or unit.id not in done:
            continue
        reason = _own_weights_problem(rundir.work_dir(unit.id), digests)
        parent = unit.spec.get("parent_id")
        if reason is None and parent is not None:
            if parent in stale:
                reason = f"its parent {parent} is retrained"
            elif parent not in done:
                reason = f"its parent {parent} is not done (it trains again)"
            else:
                reason = _parent_changed(rundir, unit.id, parent)
        if reason is not None:
            stale[unit.id] = reason
    return stale


def reset_stale(rundir: RunDir, units: list[Unit], digests: DigestCache, out: TextIO) -> None:
    """Clear the result and work dir of every stale unit among `units` (one line each on
    `out` saying why), so that submitting it trains it afresh: what `launch` and `tune` do
    before they submit (a stale unit left in the store would count as done to its worker)."""
    stale = stale_units(rundir, units, digests)
    for unit in units:
        if unit.id in stale:
            print(f"{unit.name} ({unit.id}): {stale[unit.id]}; retraining it", file=out, flush=True)
            rundir.reset_unit(unit.id)


def _own_weights_problem(work_dir: Path, digests: DigestCache) -> str | None:
    recorded = recorded_digests(work_dir).get(BEST)
    if recorded is None:
        return f"no digest of its {BEST} is recorded in {DIGESTS}"
    not_its_own = f"its {BEST} is not the file its training wrote (sha256 differs from {DIGESTS})"
    try:
        actual = digests.sha256(work_dir / BEST, check=check_archive)
    except OSError as exc:
        return f"its {BEST} cannot be read ({exc.strerror})"
    except FerError:  # damaged: say whether its record still vouches for it (edited to match)
        if sha256_file(work_dir / BEST) != recorded:
            return not_its_own
        return (
            f"its {BEST} does not load (not a whole checkpoint archive) though {DIGESTS} matches it"
        )
    return not_its_own if actual != recorded else None


def _parent_changed(rundir: RunDir, unit_id: str, parent: str) -> str | None:
    path = rundir.store.path("runs", unit_id)  # whole: the unit is done
    if "parent_best_sha" not in pq.read_schema(path).names:
        return None  # a result from before parent digests were recorded: nothing to compare
    started_from = pq.read_table(path, columns=["parent_best_sha"]).column(0)[0].as_py()
    current = recorded_digests(rundir.work_dir(parent)).get(BEST)
    if started_from != current:
        return f"its parent {parent} was retrained since (its {BEST} changed)"
    return None
