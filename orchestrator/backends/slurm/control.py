"""Talking to a SLURM controller that may be busy or restarting, and the limits it enforces.

Every `squeue`, `sacct`, `scancel`, `scontrol` and `sacctmgr` call of the slurm backend goes
through `slurm_call`: a call that times out or cannot reach the controller (or slurmdbd) is
retried after 2, 4, 8... s (at most 30 s apart), `retries` times (profile keys `retries` and
`retry_backoff_s`); if it still fails, one FerError line names the command and its last error.
Any other failure (an unknown job id, accounting switched off) goes back to the caller, which
knows what it means. `sbatch` runs inside submitit; the backend retries it with `retrying`
and checks `squeue` before each retry, so a job the controller accepted without answering is
adopted rather than submitted twice.

Every tool runs in `clean_env()`: the launcher's own `SLURM_*` variables (a launch inside
`salloc`/`srun` or a Ray-on-SLURM job) and rank variables are left out, so `sbatch` does not
read the enclosing allocation's options as its own and the job does not inherit them (sbatch
exports the submitting environment), nor a `squeue`/`scancel` its filters.

`read_limits` reads what caps a submission on this cluster: `MaxArraySize` (scontrol show
config) and, when the controller enforces limits (`AccountingStorageEnforce`), the
`MaxSubmitJobs`/`MaxJobs` of the user's association and QOS (sacctmgr). Each array task
counts as one job against them.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

from fer_core.errors import FerError
from fer_core.ranks import RANK_ENV
from orchestrator.plan.profiles import SlurmProfile

T = TypeVar("T")

# What SLURM's tools print when the controller (or slurmdbd) did not answer in time.
TRANSIENT = re.compile(
    r"unable to contact slurm controller|socket timed out|connection refused|"
    r"connection timed out|zero bytes were transmitted|communication connection failure|"
    r"slurm_persist_conn|transport endpoint|not responding|resource temporarily unavailable|"
    r"no answer within",
    re.IGNORECASE,
)
# What sbatch prints when a limit (not the job) is the problem: the unit waits, never fails.
LIMIT_REFUSAL = re.compile(
    r"violates accounting/QOS policy|MaxSubmitJob|SubmitJobsLimit|SubmitJobLimit", re.IGNORECASE
)
# What an allocation, a job step or submitit sets in a process: a launcher inside one must not
# hand it on. SLURM_CONF (where the cluster's config is) is the tools' own, and is kept.
SCHEDULER_PREFIXES = ("SLURM_", "SLURMD_", "SRUN_", "SUBMITIT_")
KEPT = frozenset({"SLURM_CONF"})
CALL_TIMEOUT_S = 60.0
MAX_DELAY_S = 30.0


@dataclass(frozen=True)
class Retry:
    """How often, and how patiently, a call to the controller is repeated."""

    retries: int
    backoff_s: float

    @classmethod
    def of(cls, profile: SlurmProfile) -> Retry:
        return cls(profile.retries, profile.retry_backoff_s)

    def delay(self, attempt: int) -> float:
        return min(self.backoff_s * 2**attempt, MAX_DELAY_S)


class TransientError(Exception):
    """A call that did not reach the controller; worth repeating."""


def is_transient(text: str) -> bool:
    return bool(TRANSIENT.search(text))


def retrying(
    call: Callable[[], T],
    retry: Retry,
    what: str,
    before_retry: Callable[[], T | None] | None = None,
) -> T:
    """`call()`, repeated while it raises TransientError; `before_retry()` may end the retries
    with a result (a submission found to have gone through after all)."""
    started = time.monotonic()
    for attempt in range(retry.retries + 1):
        try:
            return call()
        except TransientError as exc:
            last = " ".join(str(exc).split())[-300:]
            if attempt == retry.retries:
                break
            print(
                f"{what}: the SLURM controller did not answer ({last}); "
                f"retrying in {retry.delay(attempt):.0f} s",
                flush=True,
            )
            time.sleep(retry.delay(attempt))
            if before_retry is not None and (found := before_retry()) is not None:
                return found
    raise FerError(
        f"{what}: the SLURM controller did not answer {retry.retries + 1} times in "
        f"{time.monotonic() - started:.0f} s ({last}); nothing more was submitted or "
        f"recorded: run the command again once `scontrol ping` says UP"
    )


def launcher_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`environ` (default: this process's) without the allocation's, the job step's and the
    rank variables (SCHEDULER_PREFIXES, RANK_ENV), SLURM_CONF kept."""
    environ = os.environ if environ is None else environ
    return {
        name: value
        for name, value in environ.items()
        if name in KEPT or not (name.startswith(SCHEDULER_PREFIXES) or name in RANK_ENV)
    }


@contextlib.contextmanager
def clean_env() -> Iterator[None]:
    """This process's environment as `launcher_env` for the block (submitit runs `sbatch`
    with it, and the job inherits it); restored afterwards, whatever happens."""
    saved = dict(os.environ)
    kept = launcher_env(saved)
    try:
        for name in set(saved) - set(kept):
            del os.environ[name]
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def slurm_call(argv: list[str], retry: Retry) -> subprocess.CompletedProcess:
    """Run a SLURM tool (argv, never a shell string, in `launcher_env`); retried while the
    controller is away."""

    def once() -> subprocess.CompletedProcess:
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=CALL_TIMEOUT_S,
                check=False,
                env=launcher_env(),
            )
        except subprocess.TimeoutExpired as exc:
            raise TransientError(f"no answer within {CALL_TIMEOUT_S:.0f} s") from exc
        except OSError as exc:
            raise FerError(f"{argv[0]}: {exc}") from exc
        if done.returncode != 0 and is_transient(done.stderr):
            raise TransientError(done.stderr.strip())
        return done

    return retrying(once, retry, argv[0])


@dataclass(frozen=True)
class Limits:
    """Caps on one user's jobs; None where the cluster sets none (or will not say)."""

    max_array_size: int | None = None
    max_submit: int | None = None  # queued + running jobs (array tasks) of the user
    max_jobs: int | None = None  # running at once; more wait in the queue, not refused
    source: str = ""  # which limit max_submit comes from, for the message

    def room(self, queued: int) -> int | None:
        """Jobs that may still be submitted while `queued` of the user's are in the queue."""
        return None if self.max_submit is None else max(0, self.max_submit - queued)


def read_limits(profile: SlurmProfile, retry: Retry) -> Limits:
    config = _fields(slurm_call(["scontrol", "show", "config"], retry).stdout)
    max_array = _limit(config.get("MaxArraySize"))
    enforce = config.get("AccountingStorageEnforce", "none")
    if "limits" not in enforce and "safe" not in enforce:
        return Limits(max_array)
    user = getpass.getuser()
    where = ["where", f"user={user}", f"cluster={config.get('ClusterName', '')}"]
    if profile.account:
        where.append(f"account={profile.account}")
    assoc = slurm_call(
        [
            "sacctmgr",
            "-n",
            "-P",
            "show",
            "assoc",
            *where,
            "format=MaxSubmit,MaxJobs,QOS,DefaultQOS",
        ],
        retry,
    )
    if assoc.returncode != 0:  # accounting does not answer: the controller still enforces
        return Limits(max_array)
    caps: list[tuple[int, str]] = []
    running: list[int] = []
    qos_names = {profile.qos} if profile.qos else set()
    for line in assoc.stdout.splitlines():
        submit, jobs, qos, default_qos = (line.split("|") + ["", "", "", ""])[:4]
        if (cap := _limit(submit)) is not None:
            caps.append((cap, f"MaxSubmitJobs={cap} of {user}'s association"))
        if (cap := _limit(jobs)) is not None:
            running.append(cap)
        if not profile.qos:
            qos_names.add(default_qos or (qos.split(",")[0] if qos else "normal"))
    if qos_names:
        qos = slurm_call(
            [
                "sacctmgr",
                "-n",
                "-P",
                "show",
                "qos",
                "where",
                f"name={','.join(sorted(qos_names))}",
                "format=Name,MaxSubmitPU,MaxJobsPU",
            ],
            retry,
        )
        for line in qos.stdout.splitlines() if qos.returncode == 0 else []:
            name, submit, jobs = (line.split("|") + ["", "", ""])[:3]
            if (cap := _limit(submit)) is not None:
                caps.append((cap, f"MaxSubmitJobsPerUser={cap} of QOS {name}"))
            if (cap := _limit(jobs)) is not None:
                running.append(cap)
    cap, source = min(caps, default=(None, ""))
    return Limits(max_array, cap, min(running, default=None), source)


def queued_jobs(retry: Retry) -> int:
    """The user's jobs in the queue (pending, running, completing), array tasks one by one."""
    done = slurm_call(["squeue", "--me", "-r", "-h", "-o", "%i"], retry)
    if done.returncode != 0:
        raise FerError(f"squeue failed: {' '.join(done.stderr.split())[:200]}")
    return sum(1 for line in done.stdout.splitlines() if line.strip())


def _fields(text: str) -> dict[str, str]:
    """`Key = value` lines of `scontrol show config`."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _limit(value: str | None) -> int | None:
    """A sacctmgr/scontrol limit: a positive number, or None (empty, unlimited, -1)."""
    value = (value or "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None
