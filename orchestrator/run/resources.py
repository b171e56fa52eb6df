"""What each attempt of a unit used: the `resources` table (one row per unit attempt).

Two views of one attempt, stored apart so that neither writer can overwrite the other:

- the worker's own (`store/resources/<unit id>.parquet`, appended by `Meter` when an attempt
  ends, done, failed or interrupted): wall time, CPU time of the process and its children
  (psutil), peak RSS (getrusage), the CPUs and GPUs it was given, the interpreter that ran
  it, and on a GPU torch's peak allocated memory and the utilisation sampled through NVML
  (`nvidia-ml-py`, where installed); a killed worker leaves no row;
- the scheduler's accounting (`store/accounting/<unit id>.parquet`, rewritten by `status`
  and `report` from one batched `sacct` call, `orchestrator.backends.slurm.accounting`): every
  attempt SLURM ran, a requeued or OOM-killed one included.

`resource_rows(rundir)` merges them by (unit, job id, requeue): the accounting's times where
it has them, the worker's otherwise, both peak RSS figures; `queue_wait_s` (eligible -> start
on SLURM, submit -> start locally), `elapsed_s` and `cpu_efficiency` = CPU time / (wall time x
CPUs), from one view's pair: the worker's CPU time over its own wall time where the worker
measured the attempt (to the microsecond), else the job's TotalCPU over its Elapsed (a killed
worker's attempt; SLURM gives Elapsed in whole seconds, which over a job of a few seconds
can put the ratio well off, so it is only the fallback). `cpu_time_s` is the pair's CPU
time. `query` shows it as `resources`; the report's cost section reads it.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TypedDict

import psutil
import pyarrow as pa

from fer_core.errors import FerError
from fer_core.ranks import ranks_from_env
from orchestrator.run.rundir import RunDir

NVML_INTERVAL_S = 5.0


class WorkerRow(TypedDict):
    """One attempt as its worker saw it."""

    unit_id: str
    kind: str
    scheduler: str
    job_id: str
    requeue: int
    node: str
    python: str
    outcome: str  # done, failed, interrupted
    submitted_at: float | None  # the unit's latest submission (submissions.json)
    started_at: float
    ended_at: float
    cpus: int
    gpus: int
    cpu_time_s: float
    max_rss_mb: float
    gpu_max_memory_mb: float | None
    gpu_utilisation_pct: float | None
    units_in_job: int


class Meter:
    """Measures one attempt of a unit in its worker process; `row` once it ended."""

    def __init__(self, rundir: RunDir, unit_id: str, kind: str, info: dict[str, Any]):
        self.rundir, self.unit_id, self.kind, self.info = rundir, unit_id, kind, info
        self.started_at = time.time()
        self.process = psutil.Process()
        self.cpu_start = _cpu_seconds(self.process)
        self.gpu = _NvmlSampler()

    @contextlib.contextmanager
    def attempt(self) -> Iterator[None]:
        """Run the attempt inside; its row is appended however it ends (a SIGKILL aside)."""
        self.gpu.start()
        outcome = "failed"
        try:
            yield
            outcome = "done"
        except (SystemExit, KeyboardInterrupt):
            outcome = "interrupted"
            raise
        finally:
            self.gpu.stop()
            # a full disk ("disk full:" FerError) must not hide the unit's own outcome
            with contextlib.suppress(OSError, FerError):
                self.rundir.store.append("resources", self.unit_id, self.row(outcome))

    def row(self, outcome: str) -> WorkerRow:
        record = self.rundir.submissions().get(self.unit_id)
        pack = record.get("pack", []) if record else []
        return {
            "unit_id": self.unit_id,
            "kind": self.kind,
            "scheduler": str(self.info["scheduler"]),
            "job_id": str(self.info["job_id"]),
            "requeue": int(self.info["requeues"]),
            "node": os.uname().nodename,
            "python": sys.executable,
            "outcome": outcome,
            "submitted_at": record.get("submitted_at") if record else None,
            "started_at": self.started_at,
            "ended_at": time.time(),
            "cpus": _cpus(),
            "gpus": _gpus(),
            "cpu_time_s": _cpu_seconds(self.process) - self.cpu_start,
            "max_rss_mb": _peak_rss_mb(),
            "gpu_max_memory_mb": _torch_peak_mb(),
            "gpu_utilisation_pct": self.gpu.mean(),
            "units_in_job": max(1, len(pack)),
        }


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def _peak_rss_mb() -> float:
    """Peak resident memory of this process or any child it waited for (Linux: KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def _cpus() -> int:
    """The CPUs the unit may use: SLURM's allocation (every task's: each rank of a multi-rank
    unit is one), else this process's affinity mask (the ranks of a local unit share it)."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK")
    if slurm and slurm.isdigit():
        tasks = os.environ.get("SLURM_NTASKS", "1")
        return int(slurm) * (int(tasks) if tasks.isdigit() else 1)
    return len(os.sched_getaffinity(0))


def _gpus() -> int:
    """The GPUs the unit holds: this process's, times its ranks (each rank has its own)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        torch = sys.modules.get("torch")
        return int(torch.cuda.device_count()) if torch is not None else 0
    own = len([g for g in visible.split(",") if g.strip() and g.strip() != "-1"])
    return own * ranks_from_env().world_size


def _torch_peak_mb() -> float | None:
    """torch's peak allocated GPU memory, when this process used CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None
    return float(torch.cuda.max_memory_allocated()) / 2**20


class _NvmlSampler:
    """The visible GPUs' utilisation every NVML_INTERVAL_S, through `pynvml` (package
    `nvidia-ml-py`) when it is installed and a GPU answers; nothing otherwise."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:  # not installed, no driver, no GPU: no utilisation figure
            return
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")
        indexes = [int(g) for g in visible if g.strip().isdigit()]
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in indexes]

        def sample() -> None:
            while not self.done.wait(NVML_INTERVAL_S):
                with contextlib.suppress(Exception):
                    rates = [pynvml.nvmlDeviceGetUtilizationRates(h).gpu for h in handles]
                    self.samples.append(sum(rates) / len(rates))

        if handles:
            self.thread = threading.Thread(target=sample, name="nvml", daemon=True)
            self.thread.start()

    def stop(self) -> None:
        self.done.set()
        if self.thread is not None:
            self.thread.join()

    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


# --- the merged table ------------------------------------------------------------------------
COLUMNS = (
    "unit_id", "kind", "attempt", "job_id", "requeue", "scheduler", "state", "exit_code",
    "node", "python", "units_in_job", "submitted_at", "eligible_at", "started_at",
    "ended_at", "queue_wait_s", "elapsed_s", "cpus", "gpus", "cpu_time_s", "cpu_efficiency",
    "max_rss_mb", "sacct_max_rss_mb", "gpu_max_memory_mb", "gpu_utilisation_pct",
)  # fmt: skip


def resource_rows(rundir: RunDir, unit_ids: set[str] | None = None) -> list[dict[str, Any]]:
    """One row per attempt of the units (default: all), ordered by unit and start; the
    module docstring says which view each column comes from."""
    worker = _rows(rundir, "resources", unit_ids)
    sacct = _rows(rundir, "accounting", unit_ids)
    merged: dict[tuple[str, str, int], dict[str, Any]] = {}
    for row in worker:
        key = (row["unit_id"], str(row["job_id"]), int(row["requeue"]))
        # the worker's CPU time goes with its own wall time, not with the job's
        own = (row["cpu_time_s"], row["ended_at"] - row["started_at"])
        merged[key] = {**row, "state": row["outcome"], "own": own}
    for row in sacct:
        key = (row["unit_id"], str(row["job_id"]), int(row["requeue"]))
        mine = merged.setdefault(key, {})
        # the worker's own CPU time stays with its own wall time (the pair in `own`)
        mine.update(
            {
                k: v
                for k, v in row.items()
                if v is not None and k != "max_rss_mb" and not (k == "cpu_time_s" and "own" in mine)
            }
        )
        mine["sacct_max_rss_mb"] = row.get("max_rss_mb")
    rows = []
    for row in merged.values():
        started, ended = row.get("started_at"), row.get("ended_at")
        elapsed = row.get("elapsed_s")
        if elapsed is None and started is not None and ended is not None:
            elapsed = ended - started
        wait = row.get("queue_wait_s")
        if wait is None and row.get("requeue", 0) == 0 and started and row.get("submitted_at"):
            wait = max(0.0, started - row["submitted_at"])
        cpus = row.get("cpus")
        cpu_time, span = row.get("own", (row.get("cpu_time_s"), elapsed))
        efficiency = None
        if span and cpus and cpu_time is not None:
            efficiency = cpu_time / (span * cpus)
        rows.append(
            {
                **{c: row.get(c) for c in COLUMNS},
                "elapsed_s": elapsed,
                "queue_wait_s": wait,
                "cpu_efficiency": efficiency,
                "units_in_job": row.get("units_in_job") or 1,
            }
        )
    rows.sort(key=lambda r: (r["unit_id"], r["started_at"] or r["submitted_at"] or 0))
    attempt = 0
    for index, row in enumerate(rows):
        first = index == 0 or rows[index - 1]["unit_id"] != row["unit_id"]
        attempt = 1 if first else attempt + 1
        row["attempt"] = attempt
    return rows


def resource_table(rundir: RunDir, unit_ids: set[str] | None = None) -> pa.Table | None:
    rows = resource_rows(rundir, unit_ids)
    if not rows:
        return None
    schema = pa.schema(
        [
            (c, pa.string())
            if c in ("unit_id", "kind", "job_id", "scheduler", "state", "exit_code", "node",
                     "python")
            else (c, pa.int64())
            if c in ("attempt", "requeue", "units_in_job", "cpus", "gpus")
            else (c, pa.float64())
            for c in COLUMNS
        ]
    )  # fmt: skip
    return pa.Table.from_pylist(rows, schema=schema)


def _rows(rundir: RunDir, table: str, unit_ids: set[str] | None) -> list[dict[str, Any]]:
    found = rundir.store.read(table, unit_ids)
    return found.to_pylist() if found is not None else []
