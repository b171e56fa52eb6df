"""Grid files (`jobs/NAME.yaml`): the study as data, validated completely before anything runs.

A grid names datasets, backbones and experiments (backbones x strategies); every strategy
runs on every dataset and fold. A strategy is a chain of stage losses joined by `>`
(`ce>focal` = CE, then focal from CE's best checkpoint). Per-dataset `focal:` settings give
α and γ to every stage whose loss takes them (`fer_core.loss_registry`: focal, joint); a grid
with such a stage must give them (a focal loss with no α and γ = 0 is plain cross-entropy: a
silent change of method). Loss and backbone names are those of `fer_core.loss_registry` and
`fer_core.models.backbones`, which import no torch: loading a grid does not either.
`seed: N` or `seeds: [N, ...]` (top level, like `selection`: they apply to every stage of
every chain) gives the replicates: every unit runs once per seed. `final_epoch: best|last`
(top level) says which epoch each chain's final stage keeps (D-14); earlier stages keep
their best, which the next stage starts from.
A dataset's `protocol` is `kfold` (subject folds) or `fixed` (its own train/val/test split:
one unit per backbone, stage and seed, fold 0, and `selection: heldout` is refused: it would
select on the test set).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fer_core.config import FINAL_EPOCHS, StageConfig
from fer_core.data import wild
from fer_core.data.folds import FOLD_RULES
from fer_core.errors import FerError
from fer_core.loss_registry import FOCAL_PARAMS, LOSS_PARAMS, LOSSES
from fer_core.models.backbones import backbone_spec
from fer_core.models.pool_windows import deterministic_problem
from fer_core.spec import PROTOCOLS
from orchestrator.plan.yamlio import check_keys, load_yaml_mapping

JOBS_DIR = Path(__file__).resolve().parents[2] / "jobs"
DATASET_KINDS = ("ckplus", "oulu", "manifest", *wild.KINDS)
SYNTHETIC_KINDS = ("ckplus", "oulu", *wild.KINDS)
OPTION_KEYS = {key for options in wild.OPTIONS.values() for key in options}
DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")

GRID_KEYS = {
    "name",
    "description",
    "seed",
    "seeds",
    "folds",
    "selection",
    "final_epoch",
    "device",
    "datasets",
    "backbones",
    "experiments",
    "train",
    "stages",
    "sweep",  # dotted key -> list of values (orchestrator.plan.overrides expands it)
}
DATASET_KEYS = {
    "kind",
    "root",
    "manifest",
    "synthetic",
    "image_size",
    "crop_size",
    "detector",
    "n_folds",
    "fold_rule",
    "protocol",
    "holdout_fraction",
    "holdout_seed",
    "focal",
    "scale",  # a fixed-split twin's size: 1 = the real split sizes and class counts
    *OPTION_KEYS,  # a dataset kind's own options (fer_core.data.wild.OPTIONS)
}
FIXED_ONLY_KEYS = ("holdout_fraction", "holdout_seed")
KFOLD_ONLY_KEYS = ("n_folds", "fold_rule")
FOCAL_KEYS = set(FOCAL_PARAMS)
BACKBONE_KEYS = {"weights", "input_size"}
# StageConfig fields a grid sets elsewhere: the strategy the loss, the top level the rest.
NOT_TRAIN_KEYS = {"loss", "selection", "seed", "final_epoch"}
EXPERIMENT_KEYS = {"backbones", "strategies"}


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the grid: where its raw tree is and how faces are cropped."""

    name: str
    kind: str
    root: str | None
    manifest: str | None = None
    synthetic: bool = False
    image_size: tuple[int, int] | None = None
    crop_size: int = 299
    detector: str = "mtcnn"
    n_folds: int = 10
    fold_rule: str = FOLD_RULES[0]  # how sorted subjects become folds (D-9)
    focal: dict[str, Any] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)  # the kind's, defaults filled in
    scale: float | None = None  # a fixed-split twin's; None: not such a twin
    protocol: str = "kfold"  # kfold | fixed (fer_core.data.protocol)
    holdout_fraction: float = 0.1  # fixed without a val split: share of train that selects
    holdout_seed: int = 0

    @property
    def fixed(self) -> bool:
        return self.protocol == "fixed"


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    weights: str = "none"
    input_size: int | None = None


@dataclass(frozen=True)
class Experiment:
    backbones: tuple[str, ...]
    strategies: tuple[str, ...]


@dataclass(frozen=True)
class Grid:
    """A validated grid file."""

    name: str
    path: Path
    description: str
    seeds: tuple[int, ...]  # replicates: every unit once per seed
    folds: tuple[int, ...] | None  # None: every fold of each dataset
    selection: str
    final_epoch: str  # the final stage's kept epoch: "best" or "last"
    device: str
    datasets: dict[str, DatasetSpec]
    backbones: dict[str, BackboneSpec]
    experiments: tuple[Experiment, ...]
    train: dict[str, Any]
    stages: dict[int, dict[str, Any]]
    mapping: dict[str, Any] = field(default_factory=dict)  # the effective grid, as validated

    def stage_config(
        self, dataset: str, loss: str, stage: int, seed: int, final: bool = False
    ) -> StageConfig:
        """Stage `stage` (1-based) with loss `loss`: the grid's train + stages.N settings, the
        dataset's focal α/γ for a focal loss, validated; the grid's `final_epoch` if it is
        its chain's `final` stage (an earlier stage always keeps its best epoch)."""
        values = dict(self.train)
        values.update(self.stages.get(stage, {}))
        values.update(loss=loss, selection=self.selection, seed=seed)
        values.update(final_epoch=self.final_epoch if final else "best")
        spec = LOSSES.get(loss)  # an unknown loss: StageConfig names it
        if spec is not None and spec.focal:
            values.update(self.datasets[dataset].focal)
        return StageConfig.from_dict(values, where=f"{self.path}: train")

    def folds_of(self, dataset: str) -> tuple[int, ...]:
        """The test folds of a k-fold dataset; (0,) for a fixed split, which has none."""
        spec = self.datasets[dataset]
        if spec.fixed:
            return (0,)
        return self.folds if self.folds is not None else tuple(range(1, spec.n_folds + 1))


def parse_strategy(strategy: str, where: str) -> tuple[str, ...]:
    """`ce>focal` -> ("ce", "focal"); an unknown stage loss is an error naming it."""
    if not isinstance(strategy, str) or not strategy:
        raise FerError(f"{where}: strategy {strategy!r} must be a non-empty string like 'ce>focal'")
    losses = tuple(part.strip() for part in strategy.split(">"))
    for loss in losses:
        if loss not in LOSSES:
            raise FerError(
                f"{where}: strategy {strategy!r} has unknown stage loss {loss!r}; "
                f"known: {', '.join(LOSSES)}"
            )
    return losses


def find_grid(name_or_path: str) -> Path:
    """`--grid NAME` finds `jobs/NAME.yaml`; a path works too."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if not candidate.is_file():
            raise FerError(f"{candidate}: grid file not found")
        return candidate
    path = JOBS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in JOBS_DIR.glob("*.yaml"))
        raise FerError(f"grid {name_or_path!r}: no {path}; known grids: {', '.join(known)}")
    return path


def load_grid(
    name_or_path: str,
    data_roots: dict[str, str] | None = None,
    *,
    focal_from_search: bool = False,
) -> Grid:
    """Load and validate a grid; `data_roots` (from `--data NAME=DIR`) override `root:` keys.
    `focal_from_search`: a tune grid, whose search sets the focal stages' α and γ (so no
    dataset gives them). Command-line overrides (`--set`, `--seeds`) and sweeps go through
    `orchestrator.plan.overrides.load_grids`."""
    path = find_grid(name_or_path)
    return grid_from_mapping(
        load_yaml_mapping(path), path, data_roots, focal_from_search=focal_from_search
    )


def grid_from_mapping(
    raw: dict[str, Any],
    path: Path,
    data_roots: dict[str, str] | None = None,
    *,
    focal_from_search: bool = False,
) -> Grid:
    """Validate a grid mapping (as read from `path`, overrides applied) into a Grid.

    A `sweep:` with more than one point is expanded by `orchestrator.plan.overrides` first.
    """
    check_keys(raw, GRID_KEYS, str(path))
    where = str(path)
    if raw.get("sweep"):
        raise FerError(
            f"{where}: sweep: is expanded by launch (orchestrator.plan.overrides); "
            "this command takes one grid point"
        )
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise FerError(f"{where}: name {name!r} must be letters, digits, '-' or '_'")
    seeds = _seeds(raw, where)

    datasets = {
        key: _dataset(key, value, f"{where}: datasets.{key}", (data_roots or {}).get(key))
        for key, value in _mapping(raw, "datasets", where).items()
    }
    if not datasets:
        raise FerError(f"{where}: datasets is empty")
    for key in data_roots or {}:
        if key not in datasets:
            raise FerError(f"--data {key}=...: the grid has no dataset {key!r}")
    backbones = {
        key: _backbone(key, value or {}, f"{where}: backbones.{key}")
        for key, value in _mapping(raw, "backbones", where).items()
    }
    experiments = tuple(
        _experiment(item, backbones, f"{where}: experiments[{i}]")
        for i, item in enumerate(raw.get("experiments") or [])
    )
    if not experiments:
        raise FerError(f"{where}: experiments is empty; list backbones x strategies to run")

    folds = raw.get("folds")
    if folds is not None:
        if isinstance(folds, int) and not isinstance(folds, bool):
            folds = list(range(1, folds + 1))
        if not isinstance(folds, list) or not folds:
            raise FerError(f"{where}: folds {folds!r} must be a count or a non-empty list")
        kfold = [d.n_folds for d in datasets.values() if not d.fixed]
        if not kfold:
            raise FerError(
                f"{where}: folds: every dataset has protocol: fixed (no folds); remove folds:"
            )
        for fold in folds:
            limit = min(kfold)
            if isinstance(fold, bool) or not isinstance(fold, int) or not 1 <= fold <= limit:
                raise FerError(f"{where}: folds: {fold!r} is not a fold number in 1..{limit}")
        folds = tuple(sorted(set(folds)))

    train = raw.get("train") or {}
    check_keys(train, set(StageConfig.__dataclass_fields__) - NOT_TRAIN_KEYS, f"{where}: train")
    stages = {}
    for key, values in (raw.get("stages") or {}).items():
        if isinstance(key, bool) or not isinstance(key, int) or key < 1:
            raise FerError(f"{where}: stages: key {key!r} must be a stage number (1, 2, ...)")
        check_keys(
            values or {},
            set(train) | set(StageConfig.__dataclass_fields__) - NOT_TRAIN_KEYS,
            f"{where}: stages.{key}",
        )
        stages[key] = dict(values or {})

    selection = raw.get("selection", "heldout")
    for dataset in datasets.values():
        if dataset.fixed and selection == "heldout":
            raise FerError(
                f"{where}: selection: heldout would choose each stage's epoch on the test set "
                f"of datasets.{dataset.name} (protocol: fixed), which may only be scored; set "
                "selection: inner (its val split, or a stratified hold-out of its training split)"
            )
    final_epoch = raw.get("final_epoch", "best")
    if final_epoch not in FINAL_EPOCHS:
        raise FerError(f"{where}: final_epoch {final_epoch!r} is not one of best, last")
    if selection == "inner":
        for dataset in datasets.values():
            if not dataset.fixed and dataset.n_folds < 3:
                raise FerError(
                    f"{where}: selection: inner needs n_folds >= 3 (one fold tests, the next "
                    f"selects, the rest train); datasets.{dataset.name} has n_folds "
                    f"{dataset.n_folds}"
                )
    effective = dict(raw)
    effective["datasets"] = {
        key: {**(value or {}), "root": spec.root} if spec.root is not None else value
        for (key, value), spec in zip(raw["datasets"].items(), datasets.values(), strict=True)
    }
    grid = Grid(
        name=name,
        path=path.resolve(),
        description=str(raw.get("description", "")),
        seeds=seeds,
        folds=folds,
        selection=selection,
        final_epoch=final_epoch,
        device=str(raw.get("device", "auto")),
        datasets=datasets,
        backbones=backbones,
        experiments=experiments,
        train=dict(train),
        stages=stages,
        mapping=effective,
    )
    # Build every stage config once: bad α/γ/epochs fail here, before anything runs.
    for experiment in experiments:
        for strategy in experiment.strategies:
            for dataset_name in datasets:
                losses = parse_strategy(strategy, where)
                for stage, loss in enumerate(losses, start=1):
                    final = stage == len(losses)
                    config = grid.stage_config(dataset_name, loss, stage, seeds[0], final)
                    if config.deterministic and grid.device != "cpu":
                        for backbone in experiment.backbones:
                            _check_deterministic(grid, backbone, stage)
                    if config.sync_batchnorm and grid.device == "cpu":
                        raise FerError(
                            f"{grid.path}: train.sync_batchnorm: true needs GPU ranks (torch's "
                            "SyncBatchNorm runs on GPUs only) and this grid has device: cpu"
                        )
                    if LOSSES[loss].focal and not focal_from_search:
                        _check_focal_given(grid, dataset_name, loss, stage)
    return grid


def _check_deterministic(grid: Grid, backbone: str, stage: int) -> None:
    """`deterministic: true` where a GPU may train: refused for a backbone whose training pass
    keeps an adaptive pool at its input size (torch would raise mid-run on CUDA)."""
    model = backbone_spec(backbone)
    size = grid.backbones[backbone].input_size or model.input_size
    problem = deterministic_problem(model, size)
    if problem is not None:
        raise FerError(
            f"{grid.path}: backbones.{backbone}: deterministic: true (stage {stage}) cannot "
            f"train it on a GPU: {problem}; choose another input_size, deterministic: false, "
            "or device: cpu"
        )


def _check_focal_given(grid: Grid, dataset: str, loss: str, stage: int) -> None:
    """A stage whose loss takes α and γ needs one of them from somewhere: with neither, a
    focal loss is plain CE."""
    given = set(grid.train) | set(grid.stages.get(stage, {})) | set(grid.datasets[dataset].focal)
    if not set(FOCAL_PARAMS) & given:
        raise FerError(
            f"{grid.path}: datasets.{dataset} has no focal: block, but stage {stage} uses the "
            f"{loss} loss; with no alpha and gamma 0 it is plain cross-entropy: give "
            f"datasets.{dataset}.focal: {{alpha: ..., gamma: ...}}"
        )


def _seeds(raw: dict[str, Any], where: str) -> tuple[int, ...]:
    """`seed: N` (one run per unit) or `seeds: [N, ...]` (replicates), not both."""
    if "seed" in raw and "seeds" in raw:
        raise FerError(f"{where}: give seed: or seeds:, not both")
    if "seeds" in raw:
        seeds = raw["seeds"]
        if not isinstance(seeds, list) or not seeds:
            raise FerError(f"{where}: seeds {seeds!r} must be a non-empty list of integers")
    else:
        seeds = [raw.get("seed", 0)]
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise FerError(f"{where}: seed {seed!r} must be an integer")
    if len(set(seeds)) != len(seeds):
        raise FerError(f"{where}: seeds {seeds} lists a seed twice")
    return tuple(seeds)


def parse_seeds(text: str) -> list[int]:
    """`--seeds 0,1,2` -> [0, 1, 2]."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise FerError(
            f"--seeds {text!r}: expected integers separated by commas, e.g. 0,1,2"
        ) from None


def _mapping(raw: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise FerError(f"{where}: {key} must be a mapping")
    return value


def _dataset(name: str, raw: Any, where: str, root_override: str | None) -> DatasetSpec:
    # The name becomes a folder (RUN_DIR/data/NAME), a job name and an env var (FER_DATA_NAME).
    if not isinstance(name, str) or not DATASET_NAME.fullmatch(name):
        raise FerError(f"{where}: dataset name {name!r} must be letters, digits, '-' or '_'")
    check_keys(raw, DATASET_KEYS, where)
    kind = raw.get("kind", name)
    if kind not in DATASET_KINDS:
        raise FerError(f"{where}: kind {kind!r} is not one of {', '.join(DATASET_KINDS)}")
    synthetic = bool(raw.get("synthetic", False))
    if synthetic and kind not in SYNTHETIC_KINDS:
        raise FerError(f"{where}: synthetic twins exist for {', '.join(SYNTHETIC_KINDS)} only")
    root = root_override or os.environ.get(f"FER_DATA_{name.upper()}") or raw.get("root")
    options = wild.resolve_options(kind, {k: v for k, v in raw.items() if k in OPTION_KEYS}, where)
    detector = raw.get("detector", wild.default_detector(kind, options))
    wild.check_detector(kind, detector, where)
    scale = _twin_scale(raw, kind, synthetic, where)
    crop_size = raw.get("crop_size", 299)
    n_folds = raw.get("n_folds", 10)
    for key, value in (("crop_size", crop_size), ("n_folds", n_folds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise FerError(f"{where}: {key} {value!r} must be an integer >= 2")
    fold_rule = raw.get("fold_rule", FOLD_RULES[0])
    if fold_rule not in FOLD_RULES:
        raise FerError(f"{where}: fold_rule {fold_rule!r} is not one of {', '.join(FOLD_RULES)}")
    image_size = raw.get("image_size")
    if image_size is not None:
        if not (
            isinstance(image_size, list)
            and len(image_size) == 2
            and all(isinstance(v, int) and v >= 32 for v in image_size)
        ):
            raise FerError(f"{where}: image_size {image_size!r} must be [width, height] >= 32")
        image_size = tuple(image_size)
    focal = raw.get("focal") or {}
    check_keys(focal, FOCAL_KEYS, f"{where}.focal")
    # Checked whether or not a stage uses them, as a misspelt key is: on a CE-only grid a
    # bad value would otherwise pass silently and surface only once a focal stage is added.
    for key, value in focal.items():
        try:
            LOSS_PARAMS[key].check(value)
        except FerError as exc:
            raise FerError(f"{where}.focal: {exc}") from None
    # A distributed fixed-split dataset has no subjects to fold: fixed is its only protocol.
    protocol = raw.get("protocol", "fixed" if kind in wild.KINDS else "kfold")
    if protocol not in PROTOCOLS:
        raise FerError(f"{where}: protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if kind in wild.KINDS and protocol != "fixed":
        raise FerError(
            f"{where}: protocol {protocol!r}: {kind} has a fixed train/val/test split and no "
            "subjects to fold; use protocol: fixed"
        )
    for key in (*FIXED_ONLY_KEYS, *KFOLD_ONLY_KEYS):
        if key in raw and (protocol == "fixed") != (key in FIXED_ONLY_KEYS):
            owner = "kfold" if key in KFOLD_ONLY_KEYS else "fixed"
            raise FerError(
                f"{where}: {key} applies to protocol: {owner} only; this dataset has "
                f"protocol: {protocol}"
            )
    fraction = raw.get("holdout_fraction", 0.1)
    if not (isinstance(fraction, int | float) and not isinstance(fraction, bool)) or not (
        0 < fraction < 1
    ):
        raise FerError(f"{where}: holdout_fraction {fraction!r} must be a number in (0, 1)")
    holdout_seed = raw.get("holdout_seed", 0)
    if isinstance(holdout_seed, bool) or not isinstance(holdout_seed, int):
        raise FerError(f"{where}: holdout_seed {holdout_seed!r} must be an integer")
    return DatasetSpec(
        name=name,
        kind=kind,
        root=str(root) if root is not None else None,
        manifest=raw.get("manifest"),
        synthetic=synthetic,
        image_size=image_size,
        crop_size=crop_size,
        detector=detector,
        n_folds=n_folds,
        fold_rule=fold_rule,
        focal=dict(focal),
        protocol=protocol,
        holdout_fraction=float(fraction),
        holdout_seed=holdout_seed,
        options=options,
        scale=scale,
    )


def _twin_scale(raw: dict[str, Any], kind: str, synthetic: bool, where: str) -> float | None:
    """`scale:` of a fixed-split dataset's synthetic twin (default 1: the real sizes)."""
    if "scale" in raw and not (synthetic and kind in wild.KINDS):
        raise FerError(f"{where}: scale is a synthetic {'/'.join(wild.KINDS)} twin's key")
    if not (synthetic and kind in wild.KINDS):
        return None
    scale = raw.get("scale", 1)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale <= 1:
        raise FerError(f"{where}: scale {scale!r} must be a number in (0, 1]")
    return float(scale)


def _backbone(name: str, raw: Any, where: str) -> BackboneSpec:
    model = backbone_spec(name, where)  # a timm name imports timm here, only then
    check_keys(raw, BACKBONE_KEYS, where)
    weights = raw.get("weights", "none")
    if weights is None or not isinstance(weights, str):
        raise FerError(f"{where}: weights {weights!r} must be 'none', 'pretrained' or a file path")
    input_size = raw.get("input_size")
    if model.fixed_input_size and input_size not in (None, model.input_size):
        raise FerError(
            f"{where}: input_size {input_size!r}: {name} is built for {model.input_size} px only"
        )
    smallest = model.min_input_size  # below it the network's feature maps vanish
    if input_size is not None and (
        isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < smallest
    ):
        raise FerError(f"{where}: input_size {input_size!r} must be an integer >= {smallest}")
    return BackboneSpec(name, weights, input_size)


def _experiment(raw: Any, backbones: dict[str, BackboneSpec], where: str) -> Experiment:
    check_keys(raw, EXPERIMENT_KEYS, where)
    names = raw.get("backbones") or []
    strategies = raw.get("strategies") or []
    if not names or not strategies:
        raise FerError(f"{where}: needs non-empty backbones and strategies lists")
    for name in names:
        if name not in backbones:
            raise FerError(f"{where}: backbone {name!r} is not declared under backbones:")
    for strategy in strategies:
        parse_strategy(strategy, where)
    return Experiment(tuple(names), tuple(strategies))


def parse_data_roots(pairs: list[str] | tuple[str, ...] | None) -> dict[str, str]:
    """`--data NAME=DIR` pairs from the command line -> {dataset name: raw root}."""
    roots = {}
    for pair in pairs or []:
        name, sep, root = pair.partition("=")
        if not sep or not name or not root:
            raise FerError(f"--data {pair!r}: expected NAME=DIR, e.g. --data ckplus=/data/CK+")
        roots[name] = root
    return roots
