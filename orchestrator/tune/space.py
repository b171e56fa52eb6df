"""The tune grid (`jobs/tune.yaml`): a grid file plus a `search:` block, all validated before
anything runs.

The grid part (datasets, backbones, train, stages, seed, device) has the schema of
`orchestrator.plan.grid` and is validated by it. The `search:` block says what is searched (stage-2
focal α choices and a γ range or list), on which data, and how (Ray Tune search algorithm,
ASHA scheduler, number of samples).

Nested selection (why there are two kinds of folds). The folds listed in `test_folds` are held
out of the search entirely: no trial trains on them, selects an epoch on them or is scored on
them. The remaining subjects (the *development* set) are re-split into `inner_folds`
subject-independent folds; a trial trains stage 2 on each inner split listed in `folds` and
reports its inner-validation accuracy. Only the chosen configuration is then trained on the
full training set of each test fold and scored there. (Splitting every fold's training set
instead would let one fold's test subjects train, or even validate, another fold's trial, and
so leak test labels into the choice.)
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from fer_core.config import StageConfig
from fer_core.errors import FerError
from fer_core.loss_registry import LOSSES, check_alpha, check_gamma
from orchestrator.plan.grid import Grid, find_grid, load_grid
from orchestrator.plan.yamlio import check_keys, load_yaml_mapping

T = TypeVar("T")
INVERSE_FREQUENCY = "inverse_frequency"
AlphaChoice = float | str | None  # a number in (0, 1], INVERSE_FREQUENCY, or None (no α)
GAMMA_MAX = 10.0  # (1 - p)^γ with γ > 10 leaves almost no gradient: a typo, not a setting
SEARCH_KEYS = {
    "dataset",
    "backbone",
    "test_folds",
    "inner_folds",
    "folds",
    "stage1",
    "stage2",
    "alpha",
    "gamma",
    "samples",
    "scheduler",
    "search_alg",
    "seed",
    "max_concurrent",
    "paper_protocol",
}
SCHEDULER_KEYS = {"type", "grace_period", "reduction_factor", "max_t"}
SCHEDULERS = ("asha", "fifo")
SEARCH_ALGS = ("random", "grid")
# Stage 2 is searched over α and γ, so it takes a loss that takes them; stage 1 (the trained
# parent) one that takes neither. Defaults: the paper's ce>focal.
STAGE1_LOSSES = tuple(name for name, spec in LOSSES.items() if not spec.focal)
STAGE2_LOSSES = tuple(name for name, spec in LOSSES.items() if spec.focal)
GRID_GAMMA_POINTS = 6
NOT_IN_TUNE = {
    "experiments": "the search block names the backbone and the stage losses",
    "folds": "use search.test_folds (held out) and search.folds (inner splits)",
}


@dataclass(frozen=True)
class SchedulerSpec:
    type: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 2.0


@dataclass(frozen=True)
class TuneSpec:
    """A validated tune grid."""

    grid: Grid  # datasets/backbones/train/stages; selection inner; folds = test_folds
    path: Path
    dataset: str
    backbone: str
    test_folds: tuple[int, ...]
    inner_folds: int
    search_folds: tuple[int, ...]
    stage1: str
    stage2: str
    alpha: tuple[AlphaChoice, ...]
    gamma_values: tuple[float, ...] | None  # a list of γ ...
    gamma_range: tuple[float, float] | None  # ... or a range
    samples: int
    scheduler: SchedulerSpec
    search_alg: str
    seed: int
    max_concurrent: int | None
    paper_protocol: bool
    effective: dict[str, Any] = field(default_factory=dict)  # the grid as run, for grid.yaml

    @property
    def strategy(self) -> str:
        return f"{self.stage1}>{self.stage2}"

    @property
    def dev_name(self) -> str:
        return f"{self.dataset}-dev"

    def stage2_config(self) -> StageConfig:
        """Stage 2 before α/γ are chosen (the grid's train + stages.2; α and γ at their
        defaults): what every trial's stage config starts from."""
        return self.grid.stage_config(self.dataset, self.stage2, 2, self.grid.seeds[0])

    @property
    def budget(self) -> int:
        """A trial's epochs in all (ASHA's max_t): stage-2 epochs x search folds."""
        return self.stage2_config().epochs * len(self.search_folds)

    def gamma_grid(self) -> tuple[float, ...]:
        if self.gamma_values is not None:
            return self.gamma_values
        low, high = self.gamma_range or (0.0, 0.0)
        if low == high:
            return (low,)
        step = (high - low) / (GRID_GAMMA_POINTS - 1)
        return tuple(round(low + i * step, 6) for i in range(GRID_GAMMA_POINTS))

    def n_trials(self) -> int:
        if self.search_alg == "grid":
            return len(self.alpha) * len(self.gamma_grid())
        return self.samples

    def space_identity(self) -> dict[str, Any]:
        """What names the search (with the stage-1 parents): a change starts a new experiment.
        Only hashed (`orchestrator.tune.search.experiment_name`), so a content id's dict."""
        return {
            "alpha": list(self.alpha),
            "gamma": list(self.gamma_values) if self.gamma_values is not None else None,
            "gamma_range": list(self.gamma_range) if self.gamma_range else None,
            "samples": self.samples,
            "scheduler": vars(self.scheduler),
            "search_alg": self.search_alg,
            "seed": self.seed,
            "stage2": self.stage2_config().to_dict(),
        }

    def describe_alpha(self) -> str:
        return ", ".join(alpha_label(a) for a in self.alpha)

    def describe_gamma(self) -> str:
        if self.gamma_values is not None:
            return "{" + ", ".join(f"{g:g}" for g in self.gamma_values) + "}"
        low, high = self.gamma_range or (0.0, 0.0)
        return f"[{low:g}, {high:g}]"


def alpha_label(alpha: AlphaChoice) -> str:
    """The α of a trial as text: `null`, `0.25`, `inverse_frequency`."""
    if alpha is None:
        return "null"
    if isinstance(alpha, str):
        return alpha
    return f"{float(alpha):g}"


def load_tune(
    name_or_path: str,
    data_roots: dict[str, str] | None = None,
    samples: int | None = None,
    settings: tuple[str, ...] = (),
) -> TuneSpec:
    """Load and validate a tune grid; `samples` (from `--samples`) overrides search.samples,
    `settings` (`--set KEY=VALUE`) override any key before validation."""
    from orchestrator.plan.overrides import OPEN, SCHEMA, apply_settings, parse_settings

    path = find_grid(name_or_path)
    where = str(path)
    schema = {**SCHEMA, "search": OPEN}
    raw = apply_settings(load_yaml_mapping(path), parse_settings(settings), schema)
    if "search" not in raw:
        raise FerError(f"{where}: no search: block; a tune grid needs one (see jobs/tune.yaml)")
    search = raw.pop("search")
    check_keys(search, SEARCH_KEYS, f"{where}: search")
    for key, why in NOT_IN_TUNE.items():
        if key in raw:
            raise FerError(f"{where}: {key}: is not used by a tune grid; {why}")
    selection = raw.pop("selection", "inner")
    if selection != "inner":
        raise FerError(
            f"{where}: selection {selection!r}: a search selects on inner splits only "
            "(selection: inner); the paper's protocol is reported with search.paper_protocol"
        )
    for name, dataset in (raw.get("datasets") or {}).items():
        if isinstance(dataset, dict) and "focal" in dataset:
            raise FerError(f"{where}: datasets.{name}.focal: the search sets α and γ; remove it")
    dataset = _name(search, "dataset", raw.get("datasets"), where)
    backbone = _name(search, "backbone", raw.get("backbones"), where)
    stage1 = _choice(search, "stage1", STAGE1_LOSSES, "ce", where)
    stage2 = _choice(search, "stage2", STAGE2_LOSSES, "focal", where)
    test_folds = _folds(search.get("test_folds"), f"{where}: search.test_folds", None)

    derived = {
        **raw,
        "selection": "inner",
        "experiments": [{"backbones": [backbone], "strategies": [f"{stage1}>{stage2}"]}],
    }
    grid = _load_grid_part(derived, path, data_roots)
    if grid.datasets[dataset].fixed:
        raise FerError(
            f"{where}: search.dataset: {dataset} has protocol: fixed; the nested search "
            "re-splits subject folds, which a fixed split does not have"
        )
    n_folds = grid.datasets[dataset].n_folds
    if max(test_folds) > n_folds:
        raise FerError(
            f"{where}: search.test_folds: {max(test_folds)} is not a fold number in 1..{n_folds}"
        )
    grid = replace(grid, folds=test_folds)
    if len(test_folds) > n_folds - 3:
        raise FerError(
            f"{where}: search.test_folds: holding out {len(test_folds)} of {n_folds} folds leaves "
            "too few subjects to search on; hold out at most n_folds - 3"
        )
    inner_default = n_folds - len(test_folds)
    inner_folds = search.get("inner_folds", inner_default)
    if isinstance(inner_folds, bool) or not isinstance(inner_folds, int) or inner_folds < 3:
        raise FerError(
            f"{where}: search.inner_folds: {inner_folds!r} must be an integer >= 3 (each inner "
            "split trains on inner_folds - 2 folds); hold out fewer test_folds"
        )
    search_folds = _folds(search.get("folds", inner_folds), f"{where}: search.folds", inner_folds)

    scheduler = _scheduler(search.get("scheduler") or {}, f"{where}: search.scheduler")
    search_alg = _choice(search, "search_alg", SEARCH_ALGS, "random", where)
    alpha = _alpha(search.get("alpha"), f"{where}: search.alpha")
    gamma_values, gamma_range = _gamma(search.get("gamma"), f"{where}: search.gamma")
    seed = search.get("seed", grid.seeds[0])
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise FerError(f"{where}: search.seed: {seed!r} must be an integer")
    max_concurrent = search.get("max_concurrent")
    if max_concurrent is not None and (
        isinstance(max_concurrent, bool)
        or not isinstance(max_concurrent, int)
        or max_concurrent < 1
    ):
        raise FerError(
            f"{where}: search.max_concurrent: {max_concurrent!r} must be an integer >= 1"
        )
    paper_protocol = search.get("paper_protocol", False)
    if not isinstance(paper_protocol, bool):
        raise FerError(f"{where}: search.paper_protocol: {paper_protocol!r} must be true or false")

    spec = TuneSpec(
        grid=grid,
        path=path.resolve(),
        dataset=dataset,
        backbone=backbone,
        test_folds=test_folds,
        inner_folds=inner_folds,
        search_folds=search_folds,
        stage1=stage1,
        stage2=stage2,
        alpha=alpha,
        gamma_values=gamma_values,
        gamma_range=gamma_range,
        samples=1,
        scheduler=scheduler,
        search_alg=search_alg,
        seed=seed,
        max_concurrent=max_concurrent,
        paper_protocol=paper_protocol,
    )
    spec = replace(spec, samples=_samples(search, samples, spec, where))
    spec = replace(spec, effective=_effective(grid, search, spec.samples))
    _check_max_t(search.get("scheduler") or {}, spec, f"{where}: search.scheduler")
    # Every α choice x the γ extremes must make a valid stage-2 config: fail here, not in a trial.
    base = spec.stage2_config()
    for choice in alpha:
        value = [1.0] if choice == INVERSE_FREQUENCY else choice
        for gamma in spec.gamma_grid() if gamma_values else (gamma_range or (0.0,)):
            StageConfig.from_dict(
                {**base.to_dict(), "alpha": value, "gamma": gamma}, where=f"{where}: search"
            )
    return spec


def _load_grid_part(derived: dict[str, Any], path: Path, data_roots: dict[str, str] | None) -> Grid:
    """Validate the grid part with `orchestrator.plan.grid` (errors then name the real file)."""
    import yaml

    with tempfile.TemporaryDirectory() as folder:
        temp = Path(folder) / path.name
        temp.write_text(yaml.safe_dump(derived, sort_keys=False))
        try:
            grid = load_grid(str(temp), data_roots, focal_from_search=True)
        except FerError as exc:
            message = str(exc).replace(str(temp.resolve()), str(path)).replace(str(temp), str(path))
            if str(path) not in message:  # e.g. a StageConfig value error names only the key
                message = f"{path}: {message}"
            raise FerError(message) from None
    return replace(grid, path=path.resolve())


def _name(search: dict[str, Any], key: str, declared: Any, where: str) -> str:
    value = search.get(key)
    names = sorted(declared) if isinstance(declared, dict) else []
    if not isinstance(value, str) or value not in names:
        raise FerError(
            f"{where}: search.{key}: {value!r} must name one of the grid's {key}s "
            f"({', '.join(names) or 'none declared'})"
        )
    return value


def _choice(
    search: dict[str, Any], key: str, choices: tuple[str, ...], default: str, where: str
) -> str:
    value = search.get(key, default)
    if value not in choices:
        raise FerError(f"{where}: search.{key}: {value!r} is not one of {', '.join(choices)}")
    return str(value)


def _folds(value: Any, where: str, limit: int | None) -> tuple[int, ...]:
    """A count (the first N folds) or a non-empty list of distinct 1-based folds."""
    if isinstance(value, int) and not isinstance(value, bool) and limit is not None:
        if not 1 <= value <= limit:
            raise FerError(f"{where}: {value} must be a count in 1..{limit} or a list of folds")
        return tuple(range(1, value + 1))
    if not isinstance(value, list) or not value:
        raise FerError(f"{where}: {value!r} must be a non-empty list of fold numbers")
    for fold in value:
        top = limit if limit is not None else 10**6
        if isinstance(fold, bool) or not isinstance(fold, int) or not 1 <= fold <= top:
            bound = f"1..{limit}" if limit is not None else ">= 1"
            raise FerError(f"{where}: {fold!r} is not a fold number in {bound}")
    if len(set(value)) != len(value):
        raise FerError(f"{where}: {value} lists a fold twice")
    return tuple(sorted(value))


def _alpha(value: Any, where: str) -> tuple[AlphaChoice, ...]:
    """The α choices: null, numbers (the registry's scalar range) and `inverse_frequency`."""
    if not isinstance(value, list) or not value:
        raise FerError(
            f"{where}: {value!r}: the α choices must be a non-empty list of null, numbers in "
            f"(0, 1] and {INVERSE_FREQUENCY!r} (an empty search space searches nothing)"
        )
    seen: set[str] = set()
    choices: list[AlphaChoice] = []
    for item in value:
        if item == INVERSE_FREQUENCY:
            choices.append(INVERSE_FREQUENCY)
        elif item is not None and (isinstance(item, bool) or not isinstance(item, int | float)):
            raise FerError(
                f"{where}: {item!r} is not null, a number in (0, 1] or {INVERSE_FREQUENCY!r}"
            )
        else:  # null or a number: the registry's range for a scalar α
            _checked(check_alpha, item, where)
            choices.append(None if item is None else float(item))
        label = alpha_label(choices[-1])
        if label in seen:
            raise FerError(f"{where}: {label} is listed twice")
        seen.add(label)
    return tuple(choices)


def _checked(check: Callable[[object], T], value: object, where: str) -> T:
    """`check(value)` (a `fer_core.loss_registry` check), its message prefixed by `where`."""
    try:
        return check(value)
    except FerError as exc:
        raise FerError(f"{where}: {exc}") from None


def _gamma_number(value: Any, where: str) -> float:
    gamma = _checked(check_gamma, value, where)
    if gamma > GAMMA_MAX:
        raise FerError(f"{where}: {value!r} is out of bounds; γ must be in [0, {GAMMA_MAX:g}]")
    return gamma


def _gamma(value: Any, where: str) -> tuple[tuple[float, ...] | None, tuple[float, float] | None]:
    if isinstance(value, list):
        if not value:
            raise FerError(f"{where}: []: list at least one γ (an empty search space)")
        values = tuple(_gamma_number(v, where) for v in value)
        if len(set(values)) != len(values):
            raise FerError(f"{where}: {value} lists a γ twice")
        return values, None
    if isinstance(value, dict):
        check_keys(value, {"min", "max"}, where)
        if "min" not in value or "max" not in value:
            raise FerError(f"{where}: a range needs both min and max, e.g. {{min: 0, max: 5}}")
        low = _gamma_number(value["min"], f"{where}.min")
        high = _gamma_number(value["max"], f"{where}.max")
        if low > high:
            raise FerError(f"{where}: min {low:g} > max {high:g}; the range is empty")
        return None, (low, high)
    raise FerError(f"{where}: {value!r} must be a list of γ values or a range {{min: 0, max: 5}}")


def _scheduler(value: Any, where: str) -> SchedulerSpec:
    check_keys(value, SCHEDULER_KEYS, where)
    kind = value.get("type", "asha")
    if kind not in SCHEDULERS:
        raise FerError(f"{where}.type: {kind!r} is not one of {', '.join(SCHEDULERS)}")
    grace = value.get("grace_period", 1)
    if isinstance(grace, bool) or not isinstance(grace, int) or grace < 1:
        raise FerError(f"{where}.grace_period: {grace!r} must be an integer >= 1 (epochs)")
    factor = value.get("reduction_factor", 2)
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not factor > 1:
        raise FerError(f"{where}.reduction_factor: {factor!r} must be a number > 1")
    return SchedulerSpec(kind, grace, float(factor))


def _check_max_t(value: dict[str, Any], spec: TuneSpec, where: str) -> None:
    budget = spec.budget
    if spec.scheduler.grace_period > budget:
        raise FerError(
            f"{where}.grace_period: {spec.scheduler.grace_period} exceeds a trial's {budget} "
            f"epochs (stage-2 epochs x {len(spec.search_folds)} search folds)"
        )
    max_t = value.get("max_t")
    if max_t is not None and max_t != budget:
        raise FerError(
            f"{where}.max_t: {max_t!r} must be a trial's full budget, {budget} epochs (stage-2 "
            f"epochs x {len(spec.search_folds)} search folds), or left out: the objective needs "
            "every fold"
        )


def _effective(grid: Grid, search: dict[str, Any], samples: int) -> dict[str, Any]:
    """The tune grid as it runs (after `--set`, `--samples` and `--data`), in the tune grid's
    own form: what RUN_DIR/grid.yaml keeps, as `launch` keeps its effective grid. The
    experiment the search implies is left out (a tune grid may not name one)."""
    kept = {k: v for k, v in grid.mapping.items() if k != "experiments"}
    return {**kept, "search": {**search, "samples": samples}}


def _samples(search: dict[str, Any], override: int | None, spec: TuneSpec, where: str) -> int:
    given = override if override is not None else search.get("samples")
    label = "--samples" if override is not None else f"{where}: search.samples"
    if given is not None and (isinstance(given, bool) or not isinstance(given, int) or given < 1):
        raise FerError(f"{label}: {given!r} must be a positive integer (trials to run)")
    if spec.search_alg == "grid":
        if given not in (None, 1):
            raise FerError(
                f"{label}: {given}: grid search runs each of the {spec.n_trials()} α x γ points "
                "once; samples applies to search_alg: random"
            )
        return 1
    samples = given if given is not None else 10
    if spec.gamma_values is not None:
        points = len(spec.alpha) * len(spec.gamma_values)
        if samples > points:
            raise FerError(
                f"{label}: {samples} exceeds the {points} distinct α x γ points of this discrete "
                "space; use search_alg: grid to try each once, or give gamma as {min, max}"
            )
    return samples
