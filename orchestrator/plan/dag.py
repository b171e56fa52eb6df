"""Grid -> DAG of units with content-addressed ids.

A unit's id is a hash of what determines its result (never of paths, times or scheduler
ids): a data-preparation unit hashes the dataset's content identity (its labelled frames,
subjects, folds and image bytes: `fer_core.data.identity`; a synthetic twin, its generator's
settings and version) and crop settings; a training unit hashes its data unit, fold,
backbone, the sha256 of its start weights file (`pretrained` or a path; not the path itself,
so a re-imported or replaced file retrains what used it and a moved one does not) and the
full config of every stage of its chain up to itself, seed included. So `ce` and `ce>focal`
of one seed share their stage-1 unit, which trains once, and re-expanding an unchanged grid
gives the same ids (resume, dedup), wherever the data lives. A unit on a fixed split has
fold 0 and hashes its protocol and hold-out too (a k-fold unit's id hashes neither, so it
keeps the id it had before protocols existed).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from fer_core.data.folds import FOLD_RULES
from fer_core.data.identity import dataset_identity
from fer_core.data.synthetic.twins import FORMAT as TWIN_FORMAT
from fer_core.data.synthetic.wild import FORMAT as WILD_TWIN_FORMAT
from fer_core.digest_cache import DigestCache
from fer_core.errors import FerError
from fer_core.models.weights import check_weights
from fer_core.spec import PrepareSpec, UnitSpec
from orchestrator.plan.grid import BackboneSpec, DatasetSpec, Grid, parse_strategy
from orchestrator.plan.labels import fold_tag
from orchestrator.plan.unit import Unit
from orchestrator.run.rundir import RunDir

ID_LENGTH = 16
# The UnitSpec fields every stage of a chain shares (where and on what it trains); the rest
# says which stage it is. A tune trial takes them from its stage-1 parent's spec.
CHAIN_FIELDS = (
    "grid",
    "dataset",
    "data_dir",
    "fold",
    "n_folds",
    "protocol",
    "holdout_fraction",
    "holdout_seed",
    "backbone",
    "weights",
    "input_size",
    "device",
)
LAYOUT_MARKERS = {
    "ckplus": ("cohn-kanade-images", "Emotion"),
    "oulu": ("OriginalImg/VL/Strong",),
}


def content_id(identity: dict[str, Any]) -> str:
    """A short sha256 of a canonical JSON rendering."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:ID_LENGTH]


def train_spec(
    rundir: RunDir,
    chain: Mapping[str, Any],
    unit_id: str,
    strategy: str,
    stage: int,
    config: dict[str, Any],
    parent_id: str | None,
) -> UnitSpec:
    """The spec of a training unit, for launch and tune alike: `chain` gives the CHAIN_FIELDS
    (a grid's dataset and backbone, or a parent's spec; a k-fold grid unit leaves the
    protocol fields to their defaults), the rest says which stage this is; the parent's work
    dir is the run dir's (`RunDir.work_dir`)."""
    return UnitSpec(
        unit_id=unit_id,
        **{key: chain[key] for key in CHAIN_FIELDS if key in chain},
        strategy=strategy,
        stage=stage,
        config=config,
        parent_id=parent_id,
        parent_dir=str(rundir.work_dir(parent_id)) if parent_id else None,
    )


def dataset_root(spec: DatasetSpec, rundir: RunDir) -> Path:
    """Where the raw tree is: the configured root, or the run's synthetic twin."""
    if spec.synthetic and spec.root is None:
        return rundir.synthetic_root(spec.name)
    if spec.root is None:
        raise FerError(
            f"dataset {spec.name!r} has no root: pass --data {spec.name}=DIR, set "
            f"FER_DATA_{spec.name.upper()}, or set root: in the grid"
        )
    return Path(spec.root).expanduser().resolve()


def _source_identity(spec: DatasetSpec, root: Path, digests: DigestCache) -> dict[str, Any]:
    if spec.synthetic:  # generated deterministically from these settings by this generator
        identity: dict[str, Any] = {"synthetic": spec.kind, "image_size": spec.image_size}
        if spec.scale is not None:  # a fixed-split twin: its size and its generator's version
            identity.update(scale=spec.scale, generator=WILD_TWIN_FORMAT)
        elif TWIN_FORMAT != 1:  # the first version is left out: ids issued before it hold
            identity["generator"] = TWIN_FORMAT
        return identity
    if not root.is_dir():
        raise FerError(
            f"dataset {spec.name!r}: root {root} does not exist; pass --data {spec.name}=DIR"
        )
    for marker in LAYOUT_MARKERS.get(spec.kind, ()):
        if not (root / marker).is_dir():
            raise FerError(
                f"dataset {spec.name!r}: {root} is not a {spec.kind} tree (no {marker}/ inside)"
            )
    return {
        "data": dataset_identity(
            spec.kind,
            root,
            spec.manifest,
            spec.n_folds,
            digests,
            fold_rule=spec.fold_rule,
            options=spec.options,
        )
    }


def weights_identity(
    backbone: BackboneSpec, digests: DigestCache, problems: list[str] | None = None
) -> str:
    """What a training unit's id holds of its start weights: `none`, or `sha256:` and the
    digest of the file that `weights` names. A missing file is the FerError of the weights
    pre-flight, unless `problems` is given (a dry run, whose pre-flight lists it): then the
    id holds `unresolved:` and the setting."""
    try:
        path = check_weights(backbone.name, backbone.weights)
    except FerError:
        if problems is None:
            raise
        return f"unresolved:{backbone.weights}"
    if path is None:
        return "none"
    try:
        return f"sha256:{digests.sha256(path)}"
    except OSError as exc:
        raise FerError(f"weights: backbone {backbone.name}: cannot read {path}: {exc}") from exc


def expand(
    grid: Grid,
    run_dir: Path,
    problems: list[str] | None = None,
    digests: DigestCache | None = None,
) -> list[Unit]:
    """All units of the grid in topological order (each unit after its dependencies).

    A missing or malformed data root is an error, unless `problems` is given (a dry run):
    then the message is appended there and the plan is still expanded. Image digests come
    from `digests` (the caller saves it); without it, from the run dir's cache, read only.
    """
    rundir = RunDir(Path(run_dir))
    digests = digests if digests is not None else rundir.digest_cache()
    units: dict[str, Unit] = {}
    for dataset in grid.datasets.values():
        try:
            root = dataset_root(dataset, rundir)
            source = _source_identity(dataset, root, digests)
        except FerError as exc:
            if problems is None:
                raise
            problems.append(str(exc))
            root, source = Path(dataset.root or "<unset>"), {"unresolved": dataset.name}
        prepare_id = content_id(
            {
                "kind": "prepare",
                "dataset": dataset.kind,
                "source": source,
                "crop_size": dataset.crop_size,
                "detector": dataset.detector,
                "n_folds": dataset.n_folds,
                # only when away from the default, so existing grids keep their ids (a
                # synthetic twin's source identity holds no folds: the rule must be here)
                **({"fold_rule": dataset.fold_rule} if dataset.fold_rule != FOLD_RULES[0] else {}),
                # a kind's options (absent for CK+/Oulu/manifest, whose ids stay as they were)
                **({"options": dataset.options} if dataset.options else {}),
            }
        )
        data_dir = rundir.data_dir(dataset.name, prepare_id)
        units[prepare_id] = Unit(
            id=prepare_id,
            kind="prepare",
            name=f"{dataset.name}/prepare",
            dataset=dataset.name,
            deps=(),
            spec=asdict(
                PrepareSpec(
                    dataset=dataset.kind,
                    name=dataset.name,
                    root=str(root),
                    manifest=dataset.manifest,
                    synthetic=dataset.synthetic,
                    image_size=list(dataset.image_size) if dataset.image_size else None,
                    crop_size=dataset.crop_size,
                    detector=dataset.detector,
                    n_folds=dataset.n_folds,
                    fold_rule=dataset.fold_rule,
                    out_dir=str(data_dir),
                    options=dataset.options,
                    scale=dataset.scale,
                )
            ),
        )
        for experiment in grid.experiments:
            for backbone_name in experiment.backbones:
                backbone = grid.backbones[backbone_name]
                weights = weights_identity(backbone, digests, problems)
                for strategy in experiment.strategies:
                    for seed in grid.seeds:
                        for fold in grid.folds_of(dataset.name):
                            _add_chain(
                                units,
                                grid,
                                dataset,
                                backbone,
                                weights,
                                strategy,
                                (fold, seed),
                                prepare_id,
                                data_dir,
                                rundir,
                            )
    return list(units.values())


def _add_chain(
    units, grid, dataset, backbone, weights, strategy, replicate, prepare_id, data_dir, rundir
):
    """The units of one strategy chain on one (fold, seed); stages already there (a shared
    stage 1 of the same seed) are reused."""
    fold, seed = replicate
    losses = parse_strategy(strategy, str(grid.path))
    # The seed is part of each stage's config (so of the id); names show it only when a grid
    # has several, so a one-seed grid keeps its names.
    seed_tag = f"/s{seed}" if len(grid.seeds) > 1 else ""
    split = (
        {
            "protocol": dataset.protocol,
            "holdout_fraction": dataset.holdout_fraction,
            "holdout_seed": dataset.holdout_seed,
        }
        if dataset.fixed
        else {}
    )
    chain: list[dict[str, Any]] = []
    parent: str | None = None
    for stage, loss in enumerate(losses, start=1):
        final = stage == len(losses)
        chain.append(grid.stage_config(dataset.name, loss, stage, seed, final).to_dict())
        common = {  # in the spec, and in the id with `weights` as its file's digest
            "fold": fold,
            "n_folds": 0 if dataset.fixed else dataset.n_folds,
            **split,
            "backbone": backbone.name,
            "weights": backbone.weights,
            "input_size": backbone.input_size,
            "device": grid.device,
        }
        identity = {**common, "weights": weights}  # the file's digest, not its path
        unit_id = content_id({"kind": "train", "data": prepare_id, **identity, "chain": chain})
        chain_name = ">".join(losses[:stage])
        existing = units.get(unit_id)
        if existing is not None:
            if strategy not in existing.strategies and stage == len(losses):
                units[unit_id] = _with_strategy(existing, strategy)
        else:
            units[unit_id] = Unit(
                id=unit_id,
                kind="train",
                name=f"{dataset.name}/{fold_tag(fold)}/{backbone.name}/{chain_name}{seed_tag}",
                dataset=dataset.name,
                deps=(prepare_id,) if parent is None else (parent,),
                stage=stage,
                fold=fold,
                backbone=backbone.name,
                strategy=chain_name,
                strategies=(strategy,) if stage == len(losses) else (),
                spec=asdict(
                    train_spec(
                        rundir,
                        {"grid": grid.name, "dataset": dataset.name, "data_dir": str(data_dir)}
                        | common,
                        unit_id,
                        chain_name,
                        stage,
                        chain[-1],
                        parent,
                    )
                ),
            )
        parent = unit_id


def _with_strategy(unit: Unit, strategy: str) -> Unit:
    return replace(unit, strategies=unit.strategies + (strategy,))


def summary(units: list[Unit]) -> dict[str, int]:
    """Counts for `--dry-run`: preparation jobs, trainings per stage."""
    counts: dict[str, int] = {"prepare": 0, "train": 0}
    for unit in units:
        counts[unit.kind] += 1
        if unit.kind == "train":
            key = f"stage {unit.stage}"
            counts[key] = counts.get(key, 0) + 1
    return counts
