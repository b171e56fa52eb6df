"""`status`: the units of a run by state, with progress of running ones and failure reasons.

A unit's state comes from the store (done), the run dir (failed) and the scheduler (active);
the words are `orchestrator.run.states.State`.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO, TypedDict

from fer_core.digest_cache import DigestCache
from orchestrator.backends.base import Backend
from orchestrator.plan.unit import Unit
from orchestrator.run import states as st
from orchestrator.run.lineage import stale_units
from orchestrator.run.progress import running_detail
from orchestrator.run.rundir import RunDir
from orchestrator.run.states import ACTIVE, State
from orchestrator.run.usage import usage


class StatusRow(TypedDict):
    """One unit as `status` shows it (and `status --json` prints it), and the live view
    (`orchestrator.run.progress.render`) draws it."""

    unit_id: str
    name: str
    folder: str  # its by-label alias, relative to the run dir
    state: State
    job_id: str | None  # the scheduler's, from submissions.json
    attempts: int
    detail: str  # a failure's reason, a running unit's epoch and ETA


def unit_states(
    rundir: RunDir,
    units: list[Unit],
    backend: Backend | None,
    digests: DigestCache | None = None,
) -> dict[str, State]:
    """unit id -> state, for `units` in topological order. A stored result whose lineage no
    longer holds is not done. `digests`: the file-digest cache (default: the run dir's);
    digests it learns are saved, so the next `status` does not read the same files again."""
    scheduler = backend.states(rundir) if backend is not None else {}
    digests = digests or rundir.digest_cache()
    stale = stale_units(rundir, units, digests)
    if digests.dirty:
        digests.save()
    states: dict[str, State] = {}
    for unit in units:
        if unit.id not in stale and rundir.store.is_done(unit.id, unit.kind):
            states[unit.id] = State.DONE
        elif scheduler.get(unit.id) in ACTIVE:
            states[unit.id] = State(scheduler[unit.id])
        elif rundir.failure(unit.id) is not None or scheduler.get(unit.id) == State.FAILED:
            states[unit.id] = State.FAILED
        elif _blocked(unit, states, scheduler.get(unit.id)):
            states[unit.id] = State.BLOCKED
        else:
            states[unit.id] = State.TODO
    return states


def _blocked(unit: Unit, states: dict[str, State], scheduler_state: str | None) -> bool:
    """A dependency failed, or the scheduler cancelled the unit (kill-on-invalid-dep) while a
    dependency was not done."""
    if any(states.get(dep) in (State.FAILED, State.BLOCKED) for dep in unit.deps):
        return True
    return scheduler_state == State.CANCELLED and any(
        states.get(dep) != State.DONE for dep in unit.deps
    )


def status_rows(rundir: RunDir, backend: Backend | None) -> list[StatusRow]:
    """The current DAG's units, in its order."""
    units = rundir.read_dag()
    states = unit_states(rundir, units, backend)
    submissions = rundir.submissions()
    rows: list[StatusRow] = []
    for unit in units:
        state = states[unit.id]
        detail = ""
        if state == State.FAILED:
            detail = rundir.failure(unit.id) or "the scheduler reports a failure"
        elif state == State.BLOCKED:
            detail = "a dependency failed"
        elif state == State.RUNNING:
            detail = running_detail(rundir, unit.id)
        record = submissions.get(unit.id)
        rows.append(
            {
                "unit_id": unit.id,
                "name": unit.name,
                "folder": str(rundir.label_path(unit).relative_to(rundir.path)),
                "state": state,
                "job_id": record["job_id"] if record else None,
                "attempts": record.get("attempts", 0) if record else 0,
                "detail": detail,
            }
        )
    return rows


def print_status(
    rundir: RunDir, backend: Backend | None, as_json: bool = False, out: TextIO | None = None
) -> int:
    """The table of units, then what they used and how long the rest should take
    (`orchestrator.run.usage`), after storing the scheduler's accounting (one sacct); on
    `out`, by default the sys.stdout of the call (the CLI's wraps it:
    orchestrator.cli.stdout), not the one of this module's import."""
    out = out or sys.stdout
    rows = status_rows(rundir, backend)
    if backend is not None:
        backend.record_accounting(rundir)
    states = {r["unit_id"]: r["state"] for r in rows}
    counts = st.counts(states)
    cost = usage(rundir, rundir.read_dag(), states)
    if as_json:
        body = {"run_dir": str(rundir.path), "counts": counts, "units": rows, "usage": cost}
        print(json.dumps(body, indent=1, default=vars), file=out)
        return 0
    print(f"{rundir.path}: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v), file=out)
    interesting = [r for r in rows if r["state"] != State.DONE]
    if interesting:
        width = max(len(r["name"]) for r in interesting)
        for row in interesting:
            job = row["job_id"] or "-"
            print(
                f"  {row['state']:<8} {row['name']:<{width}}  job {job:<10} {row['detail']}",
                file=out,
            )
    for line in cost.lines():
        print(line, file=out)
    print(f"unit folders by label: {rundir.by_label}", file=out)
    return 0
