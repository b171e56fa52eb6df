"""`status`: the units of a run by state, with progress of running ones and failure reasons."""

from __future__ import annotations

import json
import sys
from typing import TextIO

from orchestrator.backends.base import Backend
from orchestrator.run import states as st
from orchestrator.run.progress import running_detail
from orchestrator.run.rundir import RunDir


def status_rows(rundir: RunDir, backend: Backend | None) -> list[dict]:
    units = rundir.read_dag()
    states = st.unit_states(rundir, units, backend)
    submissions = rundir.submissions()
    rows = []
    for unit in units:
        state = states[unit.id]
        detail = ""
        if state == st.FAILED_STATE:
            detail = rundir.failure(unit.id) or "the scheduler reports a failure"
        elif state == st.BLOCKED:
            detail = "a dependency failed"
        elif state == st.RUNNING:
            detail = running_detail(rundir, unit.id)
        record = submissions.get(unit.id, {})
        rows.append(
            {
                "unit_id": unit.id,
                "name": unit.name,
                "folder": str(rundir.label_path(unit).relative_to(rundir.path)),
                "state": state,
                "job_id": record.get("job_id"),
                "attempts": record.get("attempts", 0),
                "detail": detail,
            }
        )
    return rows


def print_status(
    rundir: RunDir, backend: Backend | None, as_json: bool = False, out: TextIO = sys.stdout
) -> int:
    rows = status_rows(rundir, backend)
    counts = st.counts({r["unit_id"]: r["state"] for r in rows})
    if as_json:
        print(
            json.dumps({"run_dir": str(rundir.path), "counts": counts, "units": rows}, indent=1),
            file=out,
        )
        return 0
    print(f"{rundir.path}: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v), file=out)
    interesting = [r for r in rows if r["state"] != st.DONE]
    if interesting:
        width = max(len(r["name"]) for r in interesting)
        for row in interesting:
            job = row["job_id"] or "-"
            print(
                f"  {row['state']:<8} {row['name']:<{width}}  job {job:<10} {row['detail']}",
                file=out,
            )
    print(f"unit folders by label: {rundir.path / 'by-label'}", file=out)
    return 0
