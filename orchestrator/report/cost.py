"""The report's cost section: what the cluster time bought, and the timeline figure.

From the `resources` table (one row per attempt: `orchestrator.run.resources`) and the run
dir's profile (what each job asked for: `SlurmProfile.resources_for`): GPU- and CPU-hours
used against requested (every attempt at its `--time`), per backbone and strategy; CPU
efficiency and peak memory against the request, with the advice they imply per kind of
job; the slowest units; the total queue wait; and `timeline.png`, one bar per attempt with
its queue wait drawn apart from its run time, coloured by state, requeues marked. A packed
job's figures are split between its units; a multi-rank unit's request counts the GPUs of
all its nodes and the CPUs of all its tasks (`backends.slurm.ranks.job_totals`), as its
attempts' GPUs and CPUs do (SLURM's AllocTRES, or the worker's: every rank's). The
throughput table (`sections.cost_section`) comes first.
"""

from __future__ import annotations

from pathlib import Path
from statistics import median
from typing import Any

from fer_core.errors import FerError
from fer_core.io import atomic_write_bytes
from orchestrator.backends.slurm.ranks import job_totals
from orchestrator.plan.profiles import SlurmProfile, load_profile
from orchestrator.plan.unit import Unit
from orchestrator.report import figures, sections
from orchestrator.report.study import Study
from orchestrator.run.resources import resource_rows
from orchestrator.run.rundir import RunDir
from orchestrator.texttable import markdown_table

TIMELINE_FIGURE = "timeline.png"
NONE = "–"
SLOWEST = 5


def cost_section(study: Study, out_dir: Path) -> str:
    rundir = study.results.rundir
    units = {unit.id: unit for unit in study.results.units}
    rows = [r for r in resource_rows(rundir, set(units)) if r["unit_id"] in units]
    parts = [sections.cost_section(study)]
    if not rows:
        parts.append("No attempt has recorded its resources yet.")
        return "\n\n".join(parts)
    profile = _slurm_profile(rundir)
    parts += [
        _used_section(rows, units, profile),
        _slowest_section(rows, units),
        _timeline_section(rows, units, out_dir),
    ]
    return "\n\n".join(parts)


def _slurm_profile(rundir: RunDir) -> SlurmProfile | None:
    """The profile the run was launched with, when it asks SLURM for resources."""
    try:
        profile = load_profile(*rundir.profile())
    except FerError:  # a cluster file since moved: no request to compare with
        return None
    return profile if isinstance(profile, SlurmProfile) else None


def _requested(profile: SlurmProfile | None, unit: Unit) -> tuple[float, int, int] | None:
    """(time limit in seconds, GPUs, CPUs) that a job of `unit` asks for, all ranks'."""
    if profile is None:
        return None
    gpus, cpus = job_totals(profile, [unit])
    return profile.resources_for([unit]).time_min * 60.0, gpus, cpus


def _used_section(
    rows: list[dict[str, Any]], units: dict[str, Unit], profile: SlurmProfile | None
) -> str:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        unit = units[row["unit_id"]]
        groups.setdefault((unit.backbone or NONE, unit.strategy or unit.kind), []).append(row)
    table = []
    totals = {"gpu": 0.0, "gpu_req": 0.0, "cpu": 0.0, "cpu_req": 0.0}
    for (backbone, strategy), members in sorted(groups.items()):
        figures_ = _hours(members, units, profile)
        for key, value in figures_.items():
            totals[key] += value
        peak = _peak_gb(members)
        table.append(
            [
                backbone,
                strategy,
                len(members),
                f"{figures_['gpu']:.2f}",
                f"{figures_['gpu_req']:.2f}" if profile else NONE,
                f"{figures_['cpu']:.2f}",
                f"{figures_['cpu_req']:.2f}" if profile else NONE,
                _efficiency(members),
                f"{peak:.2f}" if peak is not None else NONE,
            ]
        )
    waits = [r["queue_wait_s"] for r in rows if r["queue_wait_s"] is not None]
    requeued = sum(1 for r in rows if r["requeue"])
    failed = sum(1 for r in rows if _state(r, rows) not in ("done", "requeued", "running"))
    request = (
        f" of {totals['gpu_req']:.2f} requested (every attempt at its --time)" if profile else ""
    )
    cpu_request = f" of {totals['cpu_req']:.2f} requested" if profile else ""
    lines = [
        "### Cluster time used",
        "",
        f"{len(rows)} attempts of {len({r['unit_id'] for r in rows})} units ({requeued} "
        f"requeued, {failed} failed or cancelled); GPU-hours used: {totals['gpu']:.2f}{request}; "
        f"CPU-hours used: {totals['cpu']:.2f}{cpu_request}; total queue wait "
        f"{_duration(sum(waits))} (longest {_duration(max(waits, default=0.0))}, eligible -> "
        "start: waiting on a parent is not counted).",
        "",
        markdown_table(
            [
                "backbone",
                "strategy",
                "attempts",
                "GPU-h used",
                "GPU-h requested",
                "CPU-h used",
                "CPU-h requested",
                "CPU efficiency",
                "peak RSS GB",
            ],
            table,
            right=[False, False] + [True] * 7,
        ),  # fmt: skip
    ]
    advice = _advice(rows, units, profile)
    if advice:
        lines += ["", "What the requests could be, from what the attempts used:", "", *advice]
    return "\n".join(lines)


def _hours(
    rows: list[dict[str, Any]], units: dict[str, Unit], profile: SlurmProfile | None
) -> dict[str, float]:
    used_gpu = used_cpu = req_gpu = req_cpu = 0.0
    for row in rows:
        share = 1 / row["units_in_job"]
        elapsed = row["elapsed_s"] or 0.0
        used_gpu += elapsed * (row["gpus"] or 0) * share
        used_cpu += elapsed * (row["cpus"] or 0) * share
        need = _requested(profile, units[row["unit_id"]])
        if need is not None:
            limit_s, gpus, cpus = need
            req_gpu += limit_s * gpus * share
            req_cpu += limit_s * cpus * share
    return {
        "gpu": used_gpu / 3600,
        "gpu_req": req_gpu / 3600,
        "cpu": used_cpu / 3600,
        "cpu_req": req_cpu / 3600,
    }


def _peak_gb(rows: list[dict[str, Any]]) -> float | None:
    """The largest peak RSS of the attempts, worker's or accounting's."""
    peaks = [
        value / 1024
        for row in rows
        for value in (row["max_rss_mb"], row["sacct_max_rss_mb"])
        if value is not None
    ]
    return max(peaks, default=None)


def _efficiency(rows: list[dict[str, Any]]) -> str:
    values = [r["cpu_efficiency"] for r in rows if r["cpu_efficiency"] is not None]
    return f"{100 * median(values):.0f} %" if values else NONE


def _advice(
    rows: list[dict[str, Any]], units: dict[str, Unit], profile: SlurmProfile | None
) -> list[str]:
    """Per kind of job (what `resources:` can set apart: prepare, or a backbone), the request
    next to the most any attempt used."""
    if profile is None:
        return []
    kinds: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        unit = units[row["unit_id"]]
        kinds.setdefault("prepare" if unit.kind == "prepare" else unit.backbone, []).append(row)
    lines = []
    for kind, members in sorted(kinds.items()):
        unit = units[members[0]["unit_id"]]
        need = profile.resources_for([unit])
        notes = []
        peak = _peak_gb(members)
        if need.mem_gb is not None and peak is not None:
            notes.append(_memory_note(need.mem_gb, peak, profile.unit_ranks(unit).per_node))
        longest = max((r["elapsed_s"] or 0.0) for r in members)
        notes.append(
            f"time_min {need.time_min} requested, the longest attempt ran {_duration(longest)}"
        )
        efficiency = _efficiency(members)
        if efficiency != NONE:
            notes.append(f"cpus {need.cpus} requested, median CPU efficiency {efficiency}")
        utilisation = [r["gpu_utilisation_pct"] for r in members if r["gpu_utilisation_pct"]]
        if need.gpus and utilisation:
            notes.append(f"gpus {need.gpus}, mean utilisation {median(utilisation):.0f} %")
        lines.append(f"- {kind}: " + "; ".join(notes))
    return lines


def _memory_note(requested_gb: float, peak_gb: float, per_node: int) -> str:
    """The memory request against the most used. `--mem` is per node, and the ranks of a
    multi-rank unit on one node share it, while a peak (the worker's, or sacct's MaxRSS) is
    one process's: a node held up to `per_node` times that."""
    if per_node == 1:
        return f"mem_gb {requested_gb:g} requested, {peak_gb:.1f} used at most"
    return (
        f"mem_gb {requested_gb:g} requested per node, up to {per_node * peak_gb:.1f} used "
        f"({per_node} ranks per node, each at most {peak_gb:.1f})"
    )


def _slowest_section(rows: list[dict[str, Any]], units: dict[str, Unit]) -> str:
    slowest = sorted(rows, key=lambda r: -(r["elapsed_s"] or 0.0))[:SLOWEST]
    table = [
        [
            units[r["unit_id"]].name,
            r["attempt"],
            r["job_id"] or NONE,
            _duration(r["elapsed_s"] or 0.0),
            _duration(r["queue_wait_s"]) if r["queue_wait_s"] is not None else NONE,
            r["state"] or NONE,
            r["node"] or NONE,
        ]
        for r in slowest
    ]
    return "### Slowest attempts\n\n" + markdown_table(
        ["unit", "attempt", "job", "ran", "queued", "state", "node"], table
    )


def timeline_bars(rows: list[dict[str, Any]], units: dict[str, Unit]) -> list[figures.TimelineBar]:
    """One bar per attempt that started, by start time, in seconds since the first
    submission; a SLURM attempt queues from when it became eligible, a requeued one from
    its requeue (unknown: no queue bar)."""
    timed = [r for r in rows if r["started_at"] is not None]
    if not timed:
        return []
    origin = min(r["submitted_at"] or r["started_at"] for r in timed)
    bars = []
    for row in sorted(timed, key=lambda r: r["started_at"]):
        queued = row["eligible_at"] or (row["submitted_at"] if not row["requeue"] else None)
        end = row["ended_at"] or row["started_at"]
        bars.append(
            figures.TimelineBar(
                label=f"{units[row['unit_id']].name} #{row['attempt']}",
                queued=queued - origin if queued is not None else None,
                start=row["started_at"] - origin,
                end=end - origin,
                state=_state(row, rows),
                requeue=row["requeue"] or 0,
            )
        )
    return bars


def _timeline_section(rows: list[dict[str, Any]], units: dict[str, Unit], out_dir: Path) -> str:
    bars = timeline_bars(rows, units)
    if not bars:
        return "### Timeline\n\nNo attempt has started yet."
    started = {r["unit_id"] for r in rows if r["started_at"] is not None}
    title = f"{len(bars)} attempts of {len(started)} units"
    atomic_write_bytes(out_dir / TIMELINE_FIGURE, figures.timeline_figure(bars, title))
    return (
        "### Timeline\n\nOne bar per attempt (a unit's attempts are numbered #1, #2...): hatched "
        "grey is the queue wait (eligible -> start), solid the run, coloured by how it ended; "
        "a requeued attempt is marked.\n\n"
        f"![timeline of the attempts]({TIMELINE_FIGURE})"
    )


def _state(row: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """done, failed, cancelled, running, or requeued (a later attempt of the same job)."""
    again = any(
        r["job_id"] == row["job_id"] and (r["requeue"] or 0) > (row["requeue"] or 0) for r in rows
    )
    if again:
        return "requeued"
    state = str(row["state"] or "").lower()
    return {"completed": "done", "pending": "running"}.get(state, state or "running")


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"
