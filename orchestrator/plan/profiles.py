"""Execution profiles (`cluster.yaml`): where and how units run, validated before any submit.

Each profile names a backend (`local`, `slurm`, `ray`) and that backend's settings. Unknown
keys and values of the wrong type are rejected naming the file, profile, key and value.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fer_core.errors import FerError
from orchestrator.plan.yamlio import load_yaml_mapping

DEFAULT_FILE = Path(__file__).resolve().parents[2] / "cluster.yaml"

# A SLURM name (partition, account, qos): passed as one argv item, and still restricted to
# the characters such names use, so a value like "gpu; rm -rf ~" is refused outright.
SLURM_NAME = re.compile(r"^[A-Za-z0-9_.,:-]+$")


def _int(min_value: int) -> Any:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < min_value:
            return f"must be an integer >= {min_value}"
        return None

    return check


def _number(min_value: float) -> Any:
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


SCHEMAS: dict[str, dict[str, Any]] = {
    "local": {"jobs": _int(1), "threads_per_job": _int(1)},
    "slurm": {
        "partition": _optional_name,
        "account": _optional_name,
        "qos": _optional_name,
        "gpus_per_job": _int(0),
        "cpus_per_job": _int(1),
        "mem_gb": _number(0.1),
        "time_min": _int(1),
        "array_parallelism": _int(1),
        "units_per_job": _int(1),
        "setup": _string_list,
        "python": _optional_string,
        "env": _mapping_of_strings,
        "timeout_requeues": _int(0),
        "retries": _int(0),
        "retry_backoff_s": _number(0.1),
    },
    "ray": {
        "address": _optional_string,
        "num_cpus": _int(1),
        "num_gpus": _number(0),
        "cpus_per_trial": _number(0.01),
        "gpus_per_trial": _number(0),
        "max_concurrent": _int(1),
        "max_failures": _int(0),
        "reuse_actors": lambda v: None if isinstance(v, bool) else "must be true or false",
        "connect_timeout_s": _number(1),
    },
}


def load_profile(name: str, path: Path | None = None) -> dict[str, Any]:
    """Profile `name` of `path` (default: the repo's cluster.yaml), validated."""
    path = Path(path or DEFAULT_FILE)
    profiles = load_yaml_mapping(path)
    for profile_name, profile in profiles.items():
        validate_profile(str(profile_name), profile, path)
    if name not in profiles:
        raise FerError(f"{path}: no profile {name!r}; profiles: {', '.join(sorted(profiles))}")
    return dict(profiles[name])


def validate_profile(name: str, profile: Any, path: Path) -> None:
    where = f"{path}: {name}"
    if not isinstance(profile, dict):
        raise FerError(f"{where}: a profile must be a mapping")
    backend = profile.get("backend")
    if backend not in SCHEMAS:
        raise FerError(f"{where}.backend: {backend!r} is not one of {', '.join(SCHEMAS)}")
    schema = SCHEMAS[backend]
    for key, value in profile.items():
        if key == "backend":
            continue
        if key not in schema:
            raise FerError(
                f"{where}: unknown key {key!r} for backend {backend}; "
                f"allowed: {', '.join(sorted(schema))}"
            )
        problem = schema[key](value)
        if problem:
            raise FerError(f"{where}.{key}: {value!r} {problem}")
