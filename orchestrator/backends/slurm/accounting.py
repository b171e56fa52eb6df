"""SLURM's accounting of a run's jobs, for the `resources` table: one `sacct` for all of them.

`status` and `report` call `record_accounting` once each: it asks `sacct` about every job the
run dir recorded (all array tasks, every requeued instance: `--duplicates`) in one call, never
one per job (a sacct per job is a known way to exhaust a user's RPC limit on slurmdbd), and
rewrites `store/accounting/<unit id>.parquet` for each unit whose jobs it knows. Fields:
Submit, Eligible (dependencies met), Start, End, Elapsed, TotalCPU, MaxRSS (of the job's
steps), AllocTRES (CPUs, GPUs), State, ExitCode, NodeList. The queue wait is Start -
Eligible: time spent waiting on a parent is not queue wait. A requeued job keeps its id;
its instances are told apart by their order (requeue 0, 1, ...), as the worker's
SLURM_RESTART_COUNT numbers them. Each row also names its unit's kind (from the DAG), which an
attempt with no worker row of its own would otherwise lack.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any

from orchestrator.backends.slurm.control import Retry, slurm_call
from orchestrator.run.rundir import RunDir, Submission

FIELDS = (
    "JobID", "Submit", "Eligible", "Start", "End", "ElapsedRaw", "TotalCPU", "MaxRSS",
    "AllocTRES", "State", "ExitCode", "NodeList",
)  # fmt: skip


def record_accounting(rundir: RunDir, retry: Retry) -> int:
    """Write the accounting rows of the run dir's SLURM jobs; how many attempts it found."""
    records = {
        unit: record
        for unit, record in rundir.submissions().items()
        if record.get("backend") == "slurm" and record.get("job_id")
    }
    if not records:
        return 0
    since = min(
        when
        for record in records.values()
        for when in (
            record.get("submitted_at", time.time()),
            *(job["submitted_at"] for job in record.get("earlier_jobs", [])),
        )
        if when is not None
    )
    jobs_of = {
        unit_id: sorted({str(record["job_id"]), *_earlier_jobs(rundir, unit_id, record)})
        for unit_id, record in records.items()
    }
    attempts = sacct_attempts([j for jobs in jobs_of.values() for j in jobs], since, retry)
    # the unit's kind, which an attempt with no worker row (killed, requeued) would lack
    kinds = {unit.id: unit.kind for unit in rundir.read_dag()} if rundir.dag_path.is_file() else {}
    by_unit: dict[str, list[dict[str, Any]]] = {}
    for unit_id, record in records.items():
        units = max(1, len(record.get("pack", [])))
        for job in jobs_of[unit_id]:
            for row in attempts.get(job, []):
                by_unit.setdefault(unit_id, []).append(
                    {"unit_id": unit_id, "kind": kinds.get(unit_id), **row, "units_in_job": units}
                )
    for unit_id, rows in by_unit.items():
        rundir.store.write("accounting", unit_id, rows)
    return sum(len(rows) for rows in by_unit.values())


def _earlier_jobs(rundir: RunDir, unit_id: str, record: Submission) -> list[str]:
    """Job ids of the unit's earlier SLURM attempts: those submissions.json keeps beside its
    newest job, its worker rows', and the accounting's an earlier `status` stored (a run dir
    of a version that kept the newest job only)."""
    jobs = [job["job_id"] for job in record.get("earlier_jobs", []) if job["backend"] == "slurm"]
    for table in ("resources", "accounting"):
        rows = rundir.store.read(table, {unit_id})
        if rows is not None:
            pairs = zip(rows["job_id"].to_pylist(), rows["scheduler"].to_pylist(), strict=True)
            jobs += [str(job) for job, scheduler in pairs if scheduler == "slurm"]
    return jobs


def sacct_attempts(
    job_ids: list[str], since: float, retry: Retry
) -> dict[str, list[dict[str, Any]]]:
    """job id (`A_i` for a task) -> its attempts in order (requeue 0, 1, ...), from one
    sacct call over the jobs' arrays; {} when sacct refuses (no accounting storage)."""
    arrays = ",".join(dict.fromkeys(j.partition("_")[0] for j in job_ids))
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since - 86400))
    argv = ["sacct", "--duplicates", "-n", "-P", "-o", ",".join(FIELDS), "-S", start, "-j", arrays]
    done = slurm_call(argv, retry)
    if done.returncode != 0:
        return {}
    jobs: dict[str, list[dict[str, Any]]] = {}
    rss: dict[tuple[str, int], float] = {}
    wanted = set(job_ids)
    for line in done.stdout.splitlines():
        values = dict(zip(FIELDS, line.split("|"), strict=False))
        job, _, step = values.get("JobID", "").partition(".")
        if job not in wanted:
            continue
        if step:  # a step of the latest instance: its peak RSS is the job's
            index = len(jobs.get(job, [])) - 1
            peak = _megabytes(values.get("MaxRSS", ""))
            if index >= 0 and peak is not None:
                rss[(job, index)] = max(rss.get((job, index), 0.0), peak)
            continue
        jobs.setdefault(job, []).append(_attempt(job, len(jobs.get(job, [])), values))
    for (job, index), peak in rss.items():
        jobs[job][index]["max_rss_mb"] = peak
    return jobs


def _attempt(job: str, requeue: int, values: dict[str, str]) -> dict[str, Any]:
    submit, eligible = _time(values["Submit"]), _time(values["Eligible"])
    started, ended = _time(values["Start"]), _time(values["End"])
    tres = dict(part.partition("=")[::2] for part in values["AllocTRES"].split(",") if part)
    gpus = sum(int(v) for k, v in tres.items() if k == "gres/gpu" and v.isdigit())
    cpu = _seconds(values["TotalCPU"])
    since = eligible or submit
    elapsed = float(values["ElapsedRaw"]) if values["ElapsedRaw"].isdigit() else None
    return {
        "job_id": job,
        "requeue": requeue,
        "scheduler": "slurm",
        "state": values["State"].split()[0] if values["State"] else None,
        "exit_code": values["ExitCode"] or None,
        "node": values["NodeList"] if values["NodeList"] not in ("", "None assigned") else None,
        "submitted_at": submit,
        "eligible_at": eligible,
        "started_at": started,
        "ended_at": ended,
        "queue_wait_s": started - since if started is not None and since is not None else None,
        "elapsed_s": elapsed if started else None,
        "cpus": int(tres["cpu"]) if tres.get("cpu", "").isdigit() else None,
        "gpus": gpus,
        # 0 with Elapsed > 0 means "not gathered" (jobacct_gather/none), not an idle job
        "cpu_time_s": cpu if cpu else None,
        "max_rss_mb": None,
    }


def _time(text: str) -> float | None:
    """sacct's local time `2026-12-06T04:14:14` -> epoch seconds; Unknown/None -> None."""
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        return None


def _seconds(text: str) -> float | None:
    """`[D-][HH:]MM:SS[.mmm]` -> seconds."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)", text.strip())
    if match is None:
        return None
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)


def _megabytes(text: str) -> float | None:
    """`1234K`, `56M`, `1.5G`, `123` (bytes) -> MiB."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", text.strip())
    if match is None:
        return None
    scale = {"": 2**-20, "K": 2**-10, "M": 1.0, "G": 2**10, "T": 2**20}[match.group(2)]
    return float(match.group(1)) * scale
