"""Human labels for units: unique within a run, and a readable folder path for each.

A unit's base name is `dataset/fNN/backbone/strategy` (`ckplus/f01/tiny/ce>focal`); a unit
on a fixed split (fold 0: the dataset's own test set, no folds) says `fixed` where the fold
goes (`rafdb/fixed/resnet18/ce>focal`). Units
that share a base name but differ (sweep points, seeds, the heldout and inner stage 1 of a
tune run) get the values that tell them apart appended: `ckplus/f01/tiny/ce@lr=0.05,seed=1`.
A unit inherits its parent's distinguishing values, so a stage 2 trained from the `lr=0.05`
stage 1 says so even when its own config does not differ.

`label_parts` turns a unit into path components for `RUN_DIR/by-label/` and TensorBoard:
`dataset/backbone/strategy/fNN/seedS[/values]` (`fixed` for fNN on a fixed split).
Naming choice: `>` becomes `-` in paths (`ce-focal`), and characters other than letters, digits
and `._=,+-` become `_`, so a path can be typed into a shell without quoting.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

from fer_core.config import LATER_KEYS
from orchestrator.plan.unit import Unit

SEPARATOR = "@"
# Spec keys that are paths, ids or already part of the base name: never a distinguishing value.
NOT_FACETS = {
    "unit_id",
    "grid",
    "name",
    "dataset",
    "data_dir",
    "out_dir",
    "root",
    "fold",
    "backbone",
    "strategy",
    "stage",
    "config",
    "parent_id",
    "parent_dir",
}
# Values that say what a stage keeps of itself, not what its children start from: the
# parent's `final_epoch` is always `best` for a child, so it is not passed on.
NOT_INHERITED = {"final_epoch"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]+")


def fold_tag(fold: int) -> str:
    """`f01` for a test fold, `fixed` for fold 0 (a fixed split has none)."""
    return f"f{fold:02d}" if fold else "fixed"


def _facets(unit: Unit) -> dict[str, Any]:
    """What a unit's result depends on, flat: spec values and its stage config (a key that
    the config leaves out at its default, `LATER_KEYS`, shows that default)."""
    facets = {k: v for k, v in unit.spec.items() if k not in NOT_FACETS}
    config = unit.spec.get("config")
    if config is not None:
        facets.update(LATER_KEYS)
        facets.update(config)
    return facets


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def distinct_names(units: list[Unit]) -> list[Unit]:
    """`units` (topological order) renamed so that no two share a name (again after units
    were added: names are rebuilt from their base)."""
    units = [replace(u, name=re.split(r"[@#]", u.name)[0]) for u in units]
    groups: dict[str, list[Unit]] = {}
    for unit in units:
        groups.setdefault(unit.name, []).append(unit)
    values: dict[str, dict[str, Any]] = {}
    for unit in units:
        own: dict[str, Any] = {}
        for dep in unit.deps:
            own.update((k, v) for k, v in values.get(dep, {}).items() if k not in NOT_INHERITED)
        group = groups[unit.name]
        if len(group) > 1:
            facets = [_facets(other) for other in group]
            mine = _facets(unit)
            for key in sorted({k for f in facets for k in f}):
                if len({json.dumps(f.get(key), sort_keys=True) for f in facets}) > 1:
                    own[key] = mine.get(key)
        values[unit.id] = own
    named = [
        replace(u, name=u.name + SEPARATOR + ",".join(f"{k}={_text(v)}" for k, v in vals.items()))
        if (vals := values[u.id])
        else u
        for u in units
    ]
    seen: dict[str, int] = {}
    for unit in named:
        seen[unit.name] = seen.get(unit.name, 0) + 1
    return [replace(u, name=f"{u.name}#{u.id[:8]}") if seen[u.name] > 1 else u for u in named]


def label_parts(
    name: str,
    dataset: str,
    backbone: str = "",
    strategy: str = "",
    fold: int = 0,
    seed: int | None = None,
) -> list[str]:
    """Path components of a unit's readable folder (see the module docstring); a unit with
    no backbone is a dataset's preparation."""
    extra = name.partition(SEPARATOR)[2]
    if not backbone:
        parts = [dataset, "prepare"]
    else:
        strategy = strategy.replace(">", "-")
        parts = [dataset, backbone, strategy, fold_tag(fold), f"seed{seed or 0}"]
    if extra:
        parts.append(extra)
    return [_UNSAFE.sub("_", part).strip("_.") or "_" for part in parts]
