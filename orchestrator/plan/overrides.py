"""`--set KEY=VALUE` overrides and `KEY=a,b,c` sweeps of a grid, from the command line.

A key is a dotted path into the grid file's mapping (`train.lr`, `stages.2.epochs`,
`datasets.ckplus.focal.gamma`, `backbones.tiny.input_size`, `experiments.0.strategies`); a
value is read as YAML (`yaml.safe_load`: `0.05`, `null`, `[0.1, 0.2]`, `true`). Overrides are
applied to the mapping *before* validation, so an overridden value is checked exactly as the
same value in the file would be, and an error names the `--set` at fault.

A value with top-level commas is a sweep: `train.lr=0.01,0.05` gives one grid point per value
(commas inside `[...]`, `{...}` or quotes do not split, so `alpha=[0.1,0.2]` is one value).
Several swept keys give their cartesian product. A grid file can hold sweeps too, under
`sweep:` (`sweep: {train.lr: [0.01, 0.05]}`); a `--set` of the same key replaces them. Each
point is a normal grid: its units get their own content ids (the same on every launch), and
units that do not depend on a swept key are shared between points (trained once). The
effective grid (file + overrides, sweeps under `sweep:`) is what the run dir keeps.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from fer_core.config import StageConfig
from fer_core.digest_cache import DigestCache
from fer_core.errors import FerError
from orchestrator.plan.dag import expand
from orchestrator.plan.grid import (
    BACKBONE_KEYS,
    DATASET_KEYS,
    EXPERIMENT_KEYS,
    GRID_KEYS,
    NOT_TRAIN_KEYS,
    Grid,
    find_grid,
    grid_from_mapping,
)
from orchestrator.plan.labels import distinct_names
from orchestrator.plan.unit import Unit
from orchestrator.plan.yamlio import load_yaml_mapping

_TRAIN = {key: None for key in set(StageConfig.__dataclass_fields__) - NOT_TRAIN_KEYS}
NAMED, NUMBERED, OPEN = "<name>", "<number>", "<any>"
# What a dotted key may walk through: None is a value; NAMED children must already be in the
# grid (a dataset, a backbone); NUMBERED ones are list indexes or stage numbers.
SCHEMA: dict[str, Any] = {
    **{key: None for key in GRID_KEYS - {"datasets", "backbones", "experiments", "sweep"}},
    "datasets": {
        NAMED: {**{key: None for key in DATASET_KEYS}, "focal": {"alpha": None, "gamma": None}}
    },
    "backbones": {NAMED: {key: None for key in BACKBONE_KEYS}},
    "experiments": {NUMBERED: {key: None for key in EXPERIMENT_KEYS}},
    "train": _TRAIN,
    "stages": {NUMBERED: _TRAIN},
}
NOT_SWEPT = ("name", "description", "sweep")


@dataclass(frozen=True)
class Setting:
    """One `--set`: a dotted key and its value(s); more than one value is a sweep."""

    key: str
    values: tuple[Any, ...]
    text: str  # as typed, for error messages

    @property
    def sweep(self) -> bool:
        return len(self.values) > 1


@dataclass(frozen=True)
class GridPlan:
    """The grid points of one launch and the effective mapping the run dir keeps."""

    grids: tuple[Grid, ...]
    points: tuple[dict[str, Any], ...]  # swept key -> value, one per grid
    effective: dict[str, Any]


def parse_settings(pairs: list[str] | tuple[str, ...] | None) -> list[Setting]:
    """`KEY=VALUE` strings -> settings; a malformed one is an error naming it."""
    settings: list[Setting] = []
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise FerError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set train.lr=0.05")
        pieces = split_values(text)
        values = tuple(_yaml_value(piece, f"--set {key}={text}") for piece in pieces)
        if len(values) > 1 and len({yaml.safe_dump(v) for v in values}) < len(values):
            raise FerError(f"--set {key}={text}: a sweep lists a value twice")
        if any(s.key == key for s in settings):
            raise FerError(f"--set {key}: given twice; give one KEY=a,b,c to sweep")
        settings.append(Setting(key, values, text))
    return settings


def split_values(text: str) -> list[str]:
    """Split at commas that are not inside brackets, braces or quotes."""
    pieces: list[str] = []
    current: list[str] = []
    depth, quote = 0, ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            pieces.append("".join(current))
            current = []
            continue
        current.append(char)
    pieces.append("".join(current))
    return pieces


def _yaml_value(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise FerError(f"{where}: not a YAML value: {problem}") from None


def assign(raw: dict[str, Any], key: str, value: Any, schema: dict[str, Any] = SCHEMA) -> None:
    """Set dotted `key` of `raw` to `value` in place; a key the grid cannot have is an error
    that names it and says what is allowed there."""
    parts = key.split(".")
    node: dict[str, Any] | list[Any] = raw
    shape: Any = schema  # a SCHEMA node: a dict of keys, OPEN, or None for a value
    walked: list[str] = []
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(walked) or "the top level"
        if shape is OPEN:
            child_shape: Any = OPEN
        elif shape is None:
            raise FerError(f"--set {key}: {'.'.join(walked)} is a value, not a mapping")
        elif NAMED in shape:
            if not isinstance(node, dict) or part not in node:
                names = ", ".join(sorted(map(str, node))) if isinstance(node, dict) else "none"
                raise FerError(
                    f"--set {key}: the grid has no {walked[-1]} entry {part!r} ({names})"
                )
            child_shape = shape[NAMED]
        elif NUMBERED in shape:
            if not part.isdigit():
                raise FerError(f"--set {key}: {part!r} under {where} must be a number")
            child_shape = shape[NUMBERED]
        elif part in shape:
            child_shape = shape[part]
        else:
            allowed = ", ".join(sorted(shape))
            raise FerError(f"--set {key}: unknown key {part!r} under {where}; allowed: {allowed}")
        index: Any = part
        if isinstance(node, list):
            index = int(part)
            if index >= len(node):
                raise FerError(f"--set {key}: {where} has {len(node)} entries (0..{len(node) - 1})")
        elif NUMBERED in (shape or {}) and shape is not OPEN:
            index = int(part)
        if last:
            node[index] = value
            return
        child = node[index] if isinstance(node, list) else node.get(index)
        if child is None:
            child = node[index] = {}
        if not isinstance(child, dict | list):
            raise FerError(f"--set {key}: {'.'.join([*walked, part])} is a value, not a mapping")
        node, shape = child, child_shape
        walked.append(part)


def apply_settings(
    raw: dict[str, Any], settings: list[Setting], schema: dict[str, Any] = SCHEMA
) -> dict[str, Any]:
    """A copy of `raw` with single-value settings applied (the `tune` command's use)."""
    result = copy.deepcopy(raw)
    for setting in settings:
        if setting.sweep:
            raise FerError(
                f"--set {setting.key}={setting.text}: sweeps are for launch; tune searches "
                "its own space (search:)"
            )
        assign(result, setting.key, setting.values[0], schema)
    return result


def load_grids(
    name_or_path: str,
    data_roots: dict[str, str] | None = None,
    settings: list[Setting] | None = None,
    seeds: list[int] | None = None,
) -> GridPlan:
    """The validated grid points of a grid file with `settings` (from `--set`) applied;
    `seeds` (from `--seeds`) replace the file's `seed`/`seeds`."""
    path = find_grid(name_or_path)
    base = load_yaml_mapping(path)
    if seeds is not None:
        base = {key: value for key, value in base.items() if key not in ("seed", "seeds")}
        base["seeds"] = list(seeds)
    sweeps = _file_sweeps(base.pop("sweep", None) or {}, path)
    defaults = {key: values[0] for key, values in sweeps.items()}

    def check(mapping: dict[str, Any], point: dict[str, Any], blame: str) -> Grid:
        trial = copy.deepcopy(mapping)
        for key, value in point.items():
            assign(trial, key, value)
        try:
            return grid_from_mapping(trial, path, data_roots)
        except FerError as exc:
            raise FerError(f"{blame}: {exc}" if blame else str(exc)) from None

    check(base, defaults, "")
    for setting in settings or []:
        if setting.key.split(".")[0] in NOT_SWEPT and setting.sweep:
            raise FerError(f"--set {setting.key}={setting.text}: {setting.key} cannot be swept")
        if setting.sweep:
            assign(copy.deepcopy(base), setting.key, None)  # the key's path is checked first
            sweeps[setting.key] = list(setting.values)
            defaults[setting.key] = setting.values[0]
        else:
            assign(base, setting.key, setting.values[0])
            sweeps.pop(setting.key, None)
            defaults.pop(setting.key, None)
            check(base, defaults, f"--set {setting.key}={setting.text}")
    for key, values in sweeps.items():
        for value in values:
            check(base, {**defaults, key: value}, f"--set {key}={_text(value)}")
    points = [
        dict(zip(sweeps, combo, strict=True)) for combo in itertools.product(*sweeps.values())
    ]
    grids = tuple(
        check(base, point, "sweep point " + ", ".join(f"{k}={_text(v)}" for k, v in point.items()))
        for point in points
    )
    effective = copy.deepcopy(base)
    for name, spec in grids[0].datasets.items():  # roots as resolved (--data, FER_DATA_*)
        if spec.root is not None:
            effective["datasets"][name] = {**(effective["datasets"][name] or {}), "root": spec.root}
    if sweeps:
        effective["sweep"] = sweeps
    return GridPlan(grids, tuple(points), effective)


def _file_sweeps(raw: Any, path: Path) -> dict[str, list[Any]]:
    if not isinstance(raw, dict):
        raise FerError(f"{path}: sweep: must map dotted keys to lists of values")
    for key, values in raw.items():
        if not isinstance(values, list) or not values:
            raise FerError(f"{path}: sweep: {key}: must be a non-empty list of values")
        if str(key).split(".")[0] in NOT_SWEPT:
            raise FerError(f"{path}: sweep: {key} cannot be swept")
    return {str(key): list(values) for key, values in raw.items()}


def _text(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def expand_plan(
    plan: GridPlan,
    run_dir: Path,
    problems: list[str] | None = None,
    digests: DigestCache | None = None,
) -> list[Unit]:
    """The units of every grid point, in topological order, each unit once (a unit that no
    swept key changes is shared by the points), named uniquely (`plan.labels`), each with
    the labels of the sweep points it serves (`Unit.points`)."""
    units: dict[str, Unit] = {}
    for grid, point in zip(plan.grids, plan.points, strict=True):
        label = point_label(point)
        point_problems: list[str] | None = [] if problems is not None else None
        for unit in expand(grid, run_dir, point_problems, digests):
            known = units.get(unit.id)
            if known is not None:
                merged = known.strategies + tuple(
                    s for s in unit.strategies if s not in known.strategies
                )
                unit = replace(known, strategies=merged)
            units[unit.id] = replace(unit, points=unit.points + (label,)) if label else unit
        if problems is not None:
            problems.extend(p for p in point_problems or [] if p not in problems)
    return distinct_names(list(units.values()))


def point_label(point: dict[str, Any]) -> str:
    """A sweep point as the report and dag.json name it: `key=value` in the sweep's order,
    comma-joined (`datasets.ckplus.focal.gamma=2,train.lr=0.01`); "" for a run without a
    sweep."""
    return ",".join(f"{key}={_text(value)}" for key, value in point.items())
