"""docs/GRIDS.md against the validator: every key it accepts is documented, and nothing else.

The page is what users read to write a grid; it must not drift from `orchestrator.plan.grid`
and `orchestrator.tune.space`. Each key table is tied to the key set the validator checks,
and the documented defaults of stage settings and datasets to the dataclasses' defaults.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
import yaml

from fer_core.config import StageConfig
from fer_core.loss_registry import LOSSES
from fer_core.models.backbones import BACKBONES
from orchestrator.plan import grid as grid_module
from orchestrator.plan.grid import DatasetSpec, load_grid
from orchestrator.tune.space import SEARCH_KEYS

DOC = Path(__file__).resolve().parents[2] / "docs" / "GRIDS.md"
STAGE_KEYS = {f.name for f in fields(StageConfig)} - grid_module.NOT_TRAIN_KEYS
SECTIONS = {
    "Top level": grid_module.GRID_KEYS,
    "datasets.NAME": grid_module.DATASET_KEYS,
    "datasets.NAME.focal": grid_module.FOCAL_KEYS,
    "backbones.NAME": grid_module.BACKBONE_KEYS,
    "experiments[i]": grid_module.EXPERIMENT_KEYS,
    "Stage settings": STAGE_KEYS,
    "Tune grids": SEARCH_KEYS,
}
ROW = re.compile(r"^\| `([^`]+)` \| ([^|]*) \| ([^|]*) \|")


def _tables() -> dict[str, dict[str, str]]:
    """Section (as keyed in SECTIONS) -> {documented key: default cell}."""
    tables: dict[str, dict[str, str]] = {}
    current = None
    for line in DOC.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip()
            current = next(
                (k for k in SECTIONS if title == k or title.startswith((k + " ", k + ":"))), None
            )
            if current:
                tables.setdefault(current, {})
            continue
        match = ROW.match(line)
        if current and match:
            tables[current][match.group(1)] = match.group(3).strip()
    return tables


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_each_table_lists_exactly_the_keys_the_validator_accepts(section):
    documented = set(_tables().get(section, {}))
    assert documented == set(SECTIONS[section]), (
        f"docs/GRIDS.md {section}: undocumented {sorted(set(SECTIONS[section]) - documented)}, "
        f"not accepted {sorted(documented - set(SECTIONS[section]))}"
    )


def _literal(cell: str):
    match = re.fullmatch(r"`([^`]*)`", cell)
    return yaml.safe_load(match.group(1)) if match else None


def test_documented_stage_defaults_are_the_real_defaults():
    table = _tables()["Stage settings"]
    for field in fields(StageConfig):
        if field.name in table:
            assert _literal(table[field.name]) == field.default, field.name


def test_documented_dataset_defaults_are_the_real_defaults():
    table = _tables()["datasets.NAME"]
    derived = {"manifest": "ROOT/manifest.csv"}  # resolved against the root at load time
    checked = 0
    for field in fields(DatasetSpec):
        cell = table.get(field.name, "")
        if field.name in derived:
            assert _literal(cell) == derived[field.name]
        elif field.default is not MISSING and re.fullmatch(r"`[^`]*`", cell):
            assert _literal(cell) == field.default, field.name
            checked += 1
    assert checked >= 3  # synthetic, crop_size, n_folds (the detector's is the kind's)


def test_the_backbone_names_are_the_registrys():
    text = DOC.read_text()
    line = next(x for x in text.splitlines() if x.startswith("NAME is one of"))
    assert set(re.findall(r"`(\w+)`", line)) == set(BACKBONES)


def test_the_stage_losses_are_the_registrys():
    row = next(x for x in DOC.read_text().splitlines() if x.startswith("| `strategies` |"))
    names = re.search(r"chains of (.*) joined", row.split("|")[4]).group(1)
    assert set(re.findall(r"`(\w+)`", names)) == set(LOSSES)


def test_the_example_grid_is_valid(tmp_path):
    block = re.search(r"```yaml\n(.*?)```", DOC.read_text(), re.S).group(1)
    path = tmp_path / "example.yaml"
    path.write_text(block)
    grid = load_grid(str(path))
    assert grid.selection == "inner" and grid.datasets["mine"].kind == "manifest"
    assert grid.stage_config("mine", "focal", 2, seed=0).epochs == 20
