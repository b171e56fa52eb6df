"""Execution profiles (`cluster.yaml`): where and how units run, validated before any submit.

Each profile names a backend (`local`, `slurm`, `ray`) and that backend's settings. One
frozen dataclass per backend holds them: its fields are the keys a profile may set, each with
its type, its one default and its check (the field's metadata), so a key, its default and
its rule live in one place and the backends read typed attributes. Validation is derived from
the fields: unknown keys and values of the wrong type are rejected naming the file, profile,
key and value. Planning imports this module, so it imports neither Ray nor submitit.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from fer_core.errors import FerError
from orchestrator.plan.unit import Unit
from orchestrator.plan.yamlio import load_yaml_mapping

DEFAULT_FILE = Path(__file__).resolve().parents[2] / "cluster.yaml"

# A SLURM name (partition, account, qos): passed as one argv item, and still restricted to
# the characters such names use, so a value like "gpu; rm -rf ~" is refused outright.
SLURM_NAME = re.compile(r"^[A-Za-z0-9_.,:-]+$")

Check = Callable[[Any], "str | None"]  # a value -> what is wrong with it, or None
CHECK, CONVERT = "check", "convert"  # field metadata: the check, and the YAML -> field type


def _int(min_value: int) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < min_value:
            return f"must be an integer >= {min_value}"
        return None

    return check


def _number(min_value: float) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < min_value:
            return f"must be a number >= {min_value}"
        return None

    return check


def _optional_name(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not SLURM_NAME.fullmatch(value):  # `$` allows a final \n
        return "must be a SLURM name (letters, digits, '_', '-', '.', ',', ':')"
    return None


def _string_list(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return "must be a list of strings"
    return None


def _optional_string(value: Any) -> str | None:
    return None if value is None or isinstance(value, str) else "must be a string"


def _mapping_of_strings(value: Any) -> str | None:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str | int | float) for k, v in value.items()
    ):
        return "must be a mapping of names to strings"
    return None


# sbatch options the tool sets itself (or submitit does): `extra_sbatch` may not set them,
# so a site flag can never unhook a dependency, a run dir's comment or the requeue signal.
TOOL_SBATCH = frozenset(
    (
        "array", "comment", "dependency", "kill-on-invalid-dep", "job-name", "nodes",
        "ntasks-per-node", "cpus-per-task", "time", "output", "error", "open-mode", "signal",
        "wckey", "partition", "account", "qos", "mem", "gpus-per-node", "gpus", "mem-per-cpu",
        "mem-per-gpu", "wrap",
    )
)  # fmt: skip
SBATCH_OPTION = re.compile(r"[a-z][a-z0-9-]*")


def _extra_sbatch(value: Any) -> str | None:
    """A site's own sbatch options (`gres`, `constraint`, `mail-type`, `exclude`...): long
    names without `--`, values on one line (submitit quotes each value in the script; a line
    break would start a new line of it)."""
    if not isinstance(value, dict):
        return "must be a mapping of sbatch options to values"
    for option, flag in value.items():
        name = str(option).replace("_", "-")
        if not isinstance(option, str) or not SBATCH_OPTION.fullmatch(name):
            return f"has {option!r}: an option is a long sbatch name without '--' (e.g. gres)"
        if name in TOOL_SBATCH:
            return f"sets --{name}, which the tool sets itself (refused)"
        if isinstance(flag, bool) or not isinstance(flag, str | int | float):
            return f"must be a mapping of sbatch options to strings or numbers ({option}: {flag!r})"
        if any(ord(c) < 32 or ord(c) == 127 for c in str(flag)):
            return f"has {option}: {flag!r}, a control character (a line break) in a value"
    return None


@dataclass(frozen=True)
class JobResources:
    """What one SLURM job asks for: `resources:` of a profile resolves to one per unit kind
    and backbone (`SlurmProfile.resources_for`)."""

    gpus: int
    cpus: int
    mem_gb: float | None
    time_min: int


@dataclass(frozen=True)
class UnitRanks:
    """How many processes (ranks) one training unit runs as, data-parallel, and on how many
    nodes: `world` ranks in all, `world // nodes` on each node, one GPU each on a GPU job
    (NCCL), CPU threads on a CPU job (gloo). Data preparation always runs as one process."""

    world: int = 1
    nodes: int = 1
    gpu: bool = False

    @property
    def per_node(self) -> int:
        return self.world // self.nodes


RESOURCE_CHECKS: dict[str, Check] = {
    "gpus": _int(0),
    "cpus": _int(1),
    "mem_gb": _number(0.1),
    "time_min": _int(1),
}


def _resources(value: Any) -> str | None:
    """`resources: {prepare: {gpus: 0, cpus: 8}, inception_v3: {mem_gb: 32}}`: per unit kind
    (`prepare`, `train`) or backbone, each key of RESOURCE_CHECKS checked as its profile key.
    A `timm:<model>` key is taken as written: timm is not imported to read a profile, and a
    grid naming the model checks the name."""
    from fer_core.models.backbones import BACKBONES, TIMM_PREFIX  # torch-free registry

    if not isinstance(value, dict):
        return "must be a mapping of a unit kind or backbone to resources"
    allowed = ("prepare", "train", *BACKBONES, f"{TIMM_PREFIX}<model>")
    for name, body in value.items():
        if name not in allowed and not str(name).startswith(TIMM_PREFIX):
            kinds = ", ".join(allowed)
            return (
                f"must be a mapping of a unit kind or backbone ({kinds}) to resources; "
                f"{name!r} is neither"
            )
        if not isinstance(body, dict) or not body:
            return f"has {name}: {body!r}, which must be a mapping of {', '.join(RESOURCE_CHECKS)}"
        for key, setting in body.items():
            if key not in RESOURCE_CHECKS:
                return f"has {name}.{key}: unknown; allowed: {', '.join(RESOURCE_CHECKS)}"
            problem = RESOURCE_CHECKS[key](setting)
            if problem:
                return f"has {name}.{key}: {setting!r}, which {problem}"
    return None


def _optional_command(value: Any) -> str | None:
    """An interpreter command, split as a shell would (`apptainer exec --nv x.sif python`)."""
    if value is None:
        return None
    try:
        words = shlex.split(value) if isinstance(value, str) else None
    except ValueError as exc:  # an unclosed quote
        return f"must be a command a shell can split ({exc})"
    return None if words else "must be a command (a path, a name on PATH, or a container command)"


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _key(default: Any, check: Check, convert: Callable[[Any], Any] | None = None) -> Any:
    """A profile key: its default, its check, and how a checked YAML value becomes the
    field's type (when it is not that already)."""
    metadata = {CHECK: check, CONVERT: convert}
    if isinstance(default, dict):  # mutable defaults (env...): a fresh one per profile
        return field(default_factory=dict, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class LocalProfile:
    """`backend: local`: units as processes on this machine."""

    backend: ClassVar[str] = "local"
    parallelism: ClassVar[str] = "jobs"  # the key `--jobs` sets

    jobs: int = _key(1, _int(1))  # units running at once
    threads_per_job: int = _key(1, _int(1))  # torch threads per unit (per rank)
    # Processes (ranks) of one training unit, data-parallel on this machine: gloo on CPU,
    # one GPU each (NCCL) where there are GPUs. Each takes threads_per_job threads.
    procs_per_unit: int = _key(1, _int(1))
    # A collective that waits longer than this fails its unit (a rank died or hangs).
    collective_timeout_s: float = _key(300.0, _number(10))

    def unit_ranks(self, unit: Unit) -> UnitRanks:
        """The ranks a unit runs as (`UnitRanks`)."""
        if unit.kind != "train":
            return UnitRanks()
        return UnitRanks(world=self.procs_per_unit)


@dataclass(frozen=True)
class SlurmProfile:
    """`backend: slurm`: units as submitit job arrays (also the allocation of `tune
    --cluster slurm`)."""

    backend: ClassVar[str] = "slurm"
    parallelism: ClassVar[str] = "array_parallelism"

    partition: str | None = _key(None, _optional_name)  # None: the cluster's default
    account: str | None = _key(None, _optional_name)
    qos: str | None = _key(None, _optional_name)
    gpus_per_job: int = _key(0, _int(0))
    cpus_per_job: int = _key(1, _int(1))
    # --mem, per node: a multi-rank unit's ranks on one node share it; None: no --mem (the
    # cluster's default)
    mem_gb: float | None = _key(None, _number(0.1))
    # A job hitting it is requeued and resumes from its last epoch; for `tune --cluster
    # slurm` it bounds the whole search's allocation.
    time_min: int = _key(60, _int(1))
    array_parallelism: int | None = _key(None, _int(1))  # the %N throttle; None: none
    units_per_job: int = _key(1, _int(1))  # >1 packs k units into one job
    setup: tuple[str, ...] = _key((), _string_list, tuple)  # shell lines before the worker
    # The job's interpreter, run after `setup:`: a path, a name found on the job's PATH
    # (`python` after a setup line activates a virtualenv), or a container command
    # (`apptainer exec --nv image.sif python`), split as a shell would; None: this
    # interpreter's absolute path.
    python: str | None = _key(None, _optional_command)
    env: dict[str, str] = _key(
        {}, _mapping_of_strings, lambda env: {k: str(v) for k, v in env.items()}
    )
    # A timed-out job is requeued this many times at most (each run resumes from its last
    # epoch, so a limit only stops a unit that cannot finish one epoch within time_min);
    # preemptions are requeued without limit.
    timeout_requeues: int = _key(3, _int(0))
    retries: int = _key(8, _int(0))  # of a SLURM tool call the controller did not answer
    retry_backoff_s: float = _key(2.0, _number(0.1))  # first delay; doubles, at most 30 s
    # A site's own sbatch options for every job, each value quoted: `{gres: "gpu:a100:1",
    # constraint: a100, mail-type: FAIL, exclude: node07}`; options the tool sets are refused.
    extra_sbatch: dict[str, str] = _key(
        {}, _extra_sbatch, lambda flags: {k.replace("_", "-"): str(v) for k, v in flags.items()}
    )
    # Per unit kind and backbone, what its jobs ask for instead of gpus_per_job, cpus_per_job,
    # mem_gb and time_min: `{prepare: {gpus: 0, cpus: 8, time_min: 60}, inception_v3:
    # {mem_gb: 32, time_min: 480}}`; a kind's entry over its backbone's over the defaults.
    resources: dict[str, dict[str, Any]] = _key({}, _resources)
    # One training unit on several GPUs and nodes, data-parallel (NCCL): gpus_per_unit GPUs
    # in all, one rank (SLURM task) each, spread evenly over nodes_per_unit nodes; > 1 sets
    # the GPUs per node of training jobs (over gpus_per_job and `resources:`). On CPU jobs
    # (no GPUs) procs_per_unit ranks (gloo) instead. A multi-rank unit takes whole jobs: no
    # packing (units_per_job 1).
    gpus_per_unit: int = _key(1, _int(1))
    nodes_per_unit: int = _key(1, _int(1))
    procs_per_unit: int = _key(1, _int(1))
    # A collective that waits longer than this fails its unit (a rank died or hangs).
    collective_timeout_s: float = _key(300.0, _number(10))

    def __post_init__(self) -> None:
        problem = _rank_problem(self.gpus_per_unit, self.procs_per_unit, self.nodes_per_unit)
        if (
            problem is None
            and self.units_per_job > 1
            and max(self.gpus_per_unit, self.procs_per_unit, self.nodes_per_unit) > 1
        ):
            problem = (
                "units_per_job > 1 packs units into one job, and a multi-rank unit takes whole "
                "jobs; use one or the other"
            )
        if problem:
            raise ProfileProblem(problem)

    def unit_ranks(self, unit: Unit) -> UnitRanks:
        """The ranks a unit runs as: gpus_per_unit on a GPU job (or when it asks for more
        than one GPU), procs_per_unit on a CPU job; preparation is one process."""
        if unit.kind != "train":
            return UnitRanks()
        if self.gpus_per_unit > 1 or self._unit_resources(unit).gpus > 0:
            return UnitRanks(self.gpus_per_unit, self.nodes_per_unit, gpu=True)
        return UnitRanks(self.procs_per_unit, self.nodes_per_unit)

    def python_command(self) -> str:
        """The job's interpreter command, each word quoted: `python` split as a shell would
        (a container command keeps its words), else this interpreter's absolute path."""
        return shlex.join(shlex.split(self.python) if self.python else [sys.executable])

    def resources_for(self, units: tuple[Unit, ...] | list[Unit]) -> JobResources:
        """What a job running `units` asks for: the largest need of each (a pack's units run
        side by side in the job)."""
        needs = [self._unit_resources(unit) for unit in units]
        mems = [n.mem_gb for n in needs]
        return JobResources(
            gpus=max(n.gpus for n in needs),
            cpus=max(n.cpus for n in needs),
            mem_gb=None if None in mems else max(m for m in mems if m is not None),
            time_min=max(n.time_min for n in needs),
        )

    def _unit_resources(self, unit: Unit) -> JobResources:
        values: dict[str, Any] = {
            "gpus": self.gpus_per_job,
            "cpus": self.cpus_per_job,
            "mem_gb": self.mem_gb,
            "time_min": self.time_min,
        }
        values.update(self.resources.get(unit.backbone, {}) if unit.backbone else {})
        values.update(self.resources.get(unit.kind, {}))
        if unit.kind == "train" and self.gpus_per_unit > 1:  # each node's share of the GPUs
            values["gpus"] = self.gpus_per_unit // self.nodes_per_unit
        return JobResources(**values)


@dataclass(frozen=True)
class RayProfile:
    """`backend: ray`: units as Ray Tune trials on a local Ray or an existing cluster (also
    where `tune` runs its trials)."""

    backend: ClassVar[str] = "ray"
    parallelism: ClassVar[str] = "max_concurrent"

    address: str | None = _key(None, _optional_string)  # HOST:PORT; None: a local Ray
    num_cpus: int | None = _key(None, _int(1))  # a local Ray only; None: all cores
    num_gpus: float | None = _key(None, _number(0))  # a local Ray only; None: Ray detects
    cpus_per_trial: float = _key(1.0, _number(0.01))
    gpus_per_trial: float = _key(0.0, _number(0))  # fractions pack trials onto one GPU
    max_concurrent: int | None = _key(None, _int(1))  # trials at once; None: as resources allow
    max_failures: int = _key(2, _int(0))  # retries of a trial whose process died
    # A unit runs in a process of its own either way (forked inside the trial); True lets
    # the next trial of a wave reuse the actor and its preloaded forkserver.
    reuse_actors: bool = _key(True, _boolean)
    connect_timeout_s: float = _key(30.0, _number(1))  # to reach `address`
    # One training unit as several Ray Train workers (ranks), data-parallel: gpus_per_unit
    # workers with one GPU each (NCCL), or on CPUs procs_per_unit workers (gloo); each
    # worker takes cpus_per_trial CPUs.
    gpus_per_unit: int = _key(1, _int(1))
    procs_per_unit: int = _key(1, _int(1))
    # A collective that waits longer than this fails its unit (a rank died or hangs).
    collective_timeout_s: float = _key(300.0, _number(10))

    def __post_init__(self) -> None:
        problem = _rank_problem(self.gpus_per_unit, self.procs_per_unit, 1)
        if problem:
            raise ProfileProblem(problem)

    def unit_ranks(self, unit: Unit) -> UnitRanks:
        """The ranks (Ray Train workers) a unit runs as; preparation is one trial."""
        if unit.kind != "train":
            return UnitRanks()
        if self.gpus_per_unit > 1:
            return UnitRanks(self.gpus_per_unit, gpu=True)
        return UnitRanks(self.procs_per_unit)

    @property
    def resources_per_trial(self) -> dict[str, float]:
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}


class ProfileProblem(ValueError):
    """Keys of a profile that are valid one by one but not together (raised while the
    dataclass is built; `parse_profile` names the file and profile)."""


def _rank_problem(gpus_per_unit: int, procs_per_unit: int, nodes_per_unit: int) -> str | None:
    """What is wrong with a profile's rank keys together, or None."""
    if gpus_per_unit > 1 and procs_per_unit > 1:
        return (
            "gpus_per_unit and procs_per_unit both > 1: procs_per_unit is the rank count of "
            "CPU jobs, gpus_per_unit of GPU jobs; set one"
        )
    world = max(gpus_per_unit, procs_per_unit)
    if world % nodes_per_unit:
        return f"nodes_per_unit {nodes_per_unit} does not divide the unit's {world} ranks evenly"
    return None


Profile = LocalProfile | SlurmProfile | RayProfile
PROFILES: dict[str, type[Profile]] = {
    kind.backend: kind for kind in (LocalProfile, SlurmProfile, RayProfile)
}


def load_profile(name: str, path: Path | None = None) -> Profile:
    """Profile `name` of `path` (default: the repo's cluster.yaml); every profile of the
    file is validated, so a typo in another one is found before anything is submitted."""
    path = Path(path or DEFAULT_FILE)
    bodies = load_yaml_mapping(path)
    profiles = {str(key): parse_profile(str(key), body, path) for key, body in bodies.items()}
    if name not in profiles:
        raise FerError(f"{path}: no profile {name!r}; profiles: {', '.join(sorted(profiles))}")
    return profiles[name]


def parse_profile(name: str, body: Any, path: Path) -> Profile:
    """The typed profile of one YAML mapping; the first bad key or value is a FerError."""
    where = f"{path}: {name}"
    if not isinstance(body, dict):
        raise FerError(f"{where}: a profile must be a mapping")
    backend = body.get("backend")
    kind = PROFILES.get(backend) if isinstance(backend, str) else None
    if kind is None:
        raise FerError(f"{where}.backend: {backend!r} is not one of {', '.join(PROFILES)}")
    keys = {key.name: key for key in fields(kind)}
    values = {}
    for key, value in body.items():
        if key == "backend":
            continue
        if key not in keys:
            raise FerError(
                f"{where}: unknown key {key!r} for backend {backend}; "
                f"allowed: {', '.join(sorted(keys))}"
            )
        problem = keys[key].metadata[CHECK](value)
        if problem:
            raise FerError(f"{where}.{key}: {value!r} {problem}")
        convert = keys[key].metadata[CONVERT]
        values[key] = value if convert is None else convert(value)
    try:
        return kind(**values)
    except ProfileProblem as exc:
        raise FerError(f"{where}: {exc}") from None


def check_unit_ranks(profile: Profile, units: list[Unit], where: str) -> None:
    """Refuse, before anything is submitted, a training unit whose global batch (`batch_size`,
    split evenly across its ranks: docs/METHOD.md D-24) does not divide by its rank count."""
    for unit in units:
        ranks = profile.unit_ranks(unit)
        batch = int(unit.spec.get("config", {}).get("batch_size", 1))
        if ranks.world > 1 and batch % ranks.world:
            raise FerError(
                f"{where}: batch_size {batch} of {unit.name} does not split evenly over the "
                f"{ranks.world} ranks of a unit; batch_size is the global batch: make it a "
                f"multiple of {ranks.world}"
            )


def with_parallelism(profile: Profile, jobs: int) -> Profile:
    """`launch --jobs N`: the profile with N units at once, set on the key that means that
    on its backend (local `jobs`, slurm `array_parallelism`, ray `max_concurrent`) and
    checked as that key is in a file."""
    key = next(k for k in fields(profile) if k.name == profile.parallelism)
    problem = key.metadata[CHECK](jobs)
    if problem:
        raise FerError(f"--jobs {jobs!r}: {problem}")
    change: dict[str, Any] = {key.name: jobs}
    return replace(profile, **change)
