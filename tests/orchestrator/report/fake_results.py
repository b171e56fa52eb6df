"""A fake but realistic finished run directory, for query/aggregate/report tests (no training).

Units, dag.json and run.json are written with the real `RunDir`/`Unit`/`Store` code; each
training unit gets a `runs` row, `predictions` whose errors are chosen per fold (so every
accuracy is known by hand), and `epochs` rows. The default: CK+ (7 classes) and Oulu
(6 classes) × inception_v3 × {ce, ce>focal} × folds 1–3. `rafdb` is a fixed split's fake
(fold 0, an imbalanced test set: 8 happiness images, 2 of each other class).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fer_core import metrics
from fer_core.checkpoints import BEST, save
from fer_core.config import StageConfig
from orchestrator.plan.labels import fold_tag
from orchestrator.plan.unit import Unit
from orchestrator.run.rundir import RunDir

CLASSES = {
    "ckplus": ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"],
    "oulu": ["anger", "disgust", "fear", "happiness", "sadness", "surprise"],
    "rafdb": ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"],
}
IMAGES_PER_FOLD = {"ckplus": 14, "oulu": 12, "rafdb": 20}  # two images per class (but rafdb)
LABELS = {"rafdb": [3] * 8 + [0, 0, 1, 1, 2, 2, 4, 4, 5, 5, 6, 6]}
# wrong predictions per (dataset, strategy) and fold 1, 2, 3
ERRORS = {
    ("ckplus", "ce"): [2, 1, 3],
    ("ckplus", "ce>focal"): [1, 1, 2],
    ("oulu", "ce"): [3, 2, 4],
    ("oulu", "ce>focal"): [2, 3, 1],
}
FOCAL = {
    "ckplus": {"alpha": 0.25, "gamma": 0.0},
    "oulu": {"alpha": None, "gamma": 0.5},
    "rafdb": {"alpha": None, "gamma": 2.0},
}


@dataclass
class FakeRun:
    rundir: RunDir
    units: list[Unit]
    train_ids: dict[tuple[str, str, int], str] = field(default_factory=dict)  # (ds, strat, fold)

    @property
    def path(self) -> Path:
        return self.rundir.path


def accuracy(dataset: str, strategy: str, fold: int, errors=ERRORS, seed: int = 0) -> float:
    """The fake's test accuracy in percent."""
    n = IMAGES_PER_FOLD[dataset]
    return 100.0 * (n - _errors(errors, dataset, strategy, seed)[_slot(fold)]) / n


def _errors(errors, dataset: str, strategy: str, seed: int) -> list[int]:
    """Wrong predictions per fold: the seed's own entry if given, else the strategy's."""
    return errors.get((dataset, strategy, seed)) or errors[(dataset, strategy)]


def _slot(fold: int) -> int:
    """A fold's entry in an errors list: fold 1 the first, a fixed split (fold 0) too."""
    return max(fold, 1) - 1


def label_of(dataset: str, i: int) -> int:
    """The label of a test unit's i-th image."""
    found = LABELS.get(dataset)
    return found[i] if found else i % len(CLASSES[dataset])


def _predictions(unit_id: str, dataset: str, fold: int, wrong: int) -> list[dict[str, Any]]:
    """Two images per class; the first `wrong` images are predicted as the next class."""
    classes = CLASSES[dataset]
    rows = []
    for i in range(IMAGES_PER_FOLD[dataset]):
        label = label_of(dataset, i)
        predicted = (label + 1) % len(classes) if i < wrong else label
        probabilities = [0.0] * len(classes)
        probabilities[predicted] = 1.0
        rows.append(
            {
                "unit_id": unit_id,
                "image_id": f"{dataset}/f{fold}/img{i:03d}",
                "subject": f"S{fold:03d}",
                "label": label,
                "predicted": predicted,
                "label_name": classes[label],
                "predicted_name": classes[predicted],
                "probabilities": probabilities,
            }
        )
    return rows


def _config(dataset: str, loss: str, selection: str, seed: int) -> dict[str, Any]:
    """The full stage configuration, as the grid's DAG and the runs rows hold it."""
    extra = FOCAL[dataset] if loss in ("focal", "joint") else {"alpha": None, "gamma": 0.0}
    values = {"loss": loss, "selection": selection, "epochs": 3, "seed": seed, **extra}
    return StageConfig.from_dict({**values, "lr_step_epoch": 2}).to_dict()


def make_run(
    run_dir: Path,
    datasets: tuple[str, ...] = ("ckplus", "oulu"),
    folds: tuple[int, ...] = (1, 2, 3),
    strategies: tuple[str, ...] = ("ce", "ce>focal"),
    backbone: str = "inception_v3",
    synthetic: bool = False,
    skip: set[tuple[str, str, int]] | frozenset = frozenset(),
    errors: dict[tuple, list[int]] = ERRORS,
    selection: str | tuple[str, ...] = "heldout",
    seeds: tuple[int, ...] = (0,),
    record_n_train: bool = True,
    extra_columns: dict[str, Any] | None = None,
    kinds: dict[str, str] | None = None,
) -> FakeRun:
    """Write the fake run; `skip` lists (dataset, strategy, fold) units left unfinished.

    `selection` may name several protocols (units of each; non-heldout ids are tagged);
    `errors` is keyed by (dataset, strategy) or, for one seed, (dataset, strategy, seed);
    `record_n_train=False` writes runs rows as older versions did (no `n_train` column);
    `extra_columns` are added to every runs row; `kinds` maps a dataset name to its kind
    (default: the name, e.g. `ckplus`; `manifest` for a user's own data).
    """
    rundir = RunDir(run_dir)
    rundir.claim("fake", Path("jobs/fake.yaml"))
    units: list[Unit] = []
    fake = FakeRun(rundir, units)
    for dataset in datasets:
        prepare_id = f"prep-{dataset}"
        kind = (kinds or {}).get(dataset, dataset)
        units.append(
            Unit(
                id=prepare_id,
                kind="prepare",
                name=f"{dataset}/prepare",
                dataset=dataset,
                deps=(),
                spec={"dataset": kind, "name": dataset, "synthetic": synthetic, "n_folds": 10},
            )
        )
        n_images = IMAGES_PER_FOLD[dataset] * (10 if 0 not in folds else 5)
        rundir.store.write(
            "prepare",
            prepare_id,
            [
                {
                    "unit_id": prepare_id,
                    "dataset": dataset,
                    "kind": kind,
                    "synthetic": synthetic,
                    "images": n_images,
                    "subjects": 20,
                    "classes": ",".join(CLASSES[dataset]),
                    "detector": "mtcnn",
                    "detected": n_images - 3,
                    "fallback": 3,
                }
            ],
        )
        protocols = (selection,) if isinstance(selection, str) else selection
        for protocol, seed, fold, strategy in itertools.product(
            protocols, seeds, folds, strategies
        ):
            _add_chain(
                fake,
                Cell(dataset, backbone, strategy, fold, seed, protocol),
                prepare_id,
                skip,
                errors,
                extra_columns or {},
                record_n_train,
            )
    rundir.write_dag(units)
    return fake


@dataclass(frozen=True)
class Cell:
    dataset: str
    backbone: str
    strategy: str
    fold: int
    seed: int
    selection: str


def _add_chain(fake, cell: Cell, prepare_id, skip, errors, extra, record_n_train) -> None:
    losses = cell.strategy.split(">")
    parent = None
    for stage in range(1, len(losses) + 1):
        chain = ">".join(losses[:stage])
        seed_tag = (f"-s{cell.seed}" if cell.seed else "") + (
            f"-{cell.selection}" if cell.selection != "heldout" else ""
        )
        unit_id = f"{cell.dataset}-{cell.backbone}-{chain.replace('>', '_')}-f{cell.fold}{seed_tag}"
        if unit_id not in {u.id for u in fake.units}:
            config = _config(cell.dataset, losses[stage - 1], cell.selection, cell.seed)
            fake.units.append(
                Unit(
                    id=unit_id,
                    kind="train",
                    name=f"{cell.dataset}/{fold_tag(cell.fold)}/{cell.backbone}/{chain}{seed_tag}",
                    dataset=cell.dataset,
                    deps=(parent or prepare_id,),
                    stage=stage,
                    fold=cell.fold,
                    backbone=cell.backbone,
                    strategy=chain,
                    strategies=(cell.strategy,) if stage == len(losses) else (),
                    spec={
                        "unit_id": unit_id,
                        "config": config,
                        "strategy": chain,
                        "weights": "pretrained",
                        "input_size": 299,
                    },
                )
            )
            if not cell.seed:  # seed 0 of the first protocol
                fake.train_ids.setdefault((cell.dataset, chain, cell.fold), unit_id)
            if (cell.dataset, chain, cell.fold) not in skip:
                wrong = _errors(errors, cell.dataset, chain, cell.seed)
                _write_unit(fake.rundir, unit_id, parent, cell, chain, stage, config, wrong, extra)
                if not record_n_train:
                    _drop_n_train(fake.rundir, unit_id)
        parent = unit_id


def _write_unit(rundir, unit_id, parent, cell: Cell, chain, stage, config, errors, extra):
    _leave_weights(rundir, unit_id)
    dataset, fold = cell.dataset, cell.fold
    wrong = errors[_slot(fold)]
    n = IMAGES_PER_FOLD[dataset]
    predictions = _predictions(unit_id, dataset, fold, wrong)
    classes = CLASSES[dataset]
    scored = metrics.metrics(
        metrics.confusion_matrix(
            [p["label"] for p in predictions], [p["predicted"] for p in predictions], len(classes)
        )
    )
    alpha = config["alpha"]
    held_out = 2 if cell.selection == "inner" else 1  # test fold (+ inner-validation fold)
    run = {
        "unit_id": unit_id,
        "parent_id": parent,
        "grid": "fake",
        "dataset": dataset,
        "fold": fold,
        "backbone": cell.backbone,
        "strategy": chain,
        "stage": stage,
        "loss": config["loss"],
        "alpha": None if alpha is None else str(alpha),
        "gamma": float(config["gamma"]),
        "selection": config["selection"],
        "seed": cell.seed,
        "epochs": 3,
        "best_epoch": 2,
        "selection_accuracy": (n - wrong) / n,
        "test_accuracy": (n - wrong) / n,
        "mean_class_accuracy": scored.mean_class_accuracy,
        "macro_f1": scored.macro_f1,
        "per_class_recall": scored.per_class_recall,
        "test_class_counts": [
            sum(label_of(dataset, i) == c for i in range(n)) for c in range(len(classes))
        ],
        "classes": classes,
        "n_test": n,
        "n_train": n * (10 - held_out),
        "input_size": 299,
        "train_seconds": 10.0 + fold,
        "images_per_second": 100.0,
        "startup_seconds": 2.0,
        "device": "cpu",
        "host": "node1",
        "scheduler": "local",
        "job_id": "1",
        "requeues": 0,
        "package_version": "0.1.0",
        "torch_version": "2.5.1",
        "python_version": "3.12.3",
        "config": json.dumps(config, sort_keys=True),
        "started_at": 1_700_000_000.0 + fold,
        "finished_at": 1_700_000_100.0 + fold,
    }
    run.update(extra)
    epochs = [
        {
            "unit_id": unit_id,
            "epoch": e,
            "lr": 0.01,
            "train_loss": 1.0 / e,
            "train_accuracy": 0.5,
            "selection_accuracy": 0.5,
            "skipped_batches": 0,
            "seconds": 1.0,
        }
        for e in (1, 2, 3)
    ]
    rundir.store.write_unit(unit_id, run, predictions, epochs)


def _drop_n_train(rundir: RunDir, unit_id: str) -> None:
    """Rewrite the unit's runs row without `n_train`, as rows written before it existed."""
    row = rundir.store.read("runs", {unit_id}).to_pylist()[0]
    del row["n_train"]
    rundir.store.write("runs", unit_id, [row])


def _leave_weights(rundir, unit_id: str) -> None:
    """What a finished training leaves in its work dir: a best.pt (a real, loadable archive)
    and its recorded digest (without them the unit's lineage does not hold, and it would
    count as not done)."""
    work = rundir.work_dir(unit_id)
    work.mkdir(parents=True, exist_ok=True)
    save({"unit_id": unit_id}, work, BEST)
