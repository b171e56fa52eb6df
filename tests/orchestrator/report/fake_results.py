"""A fake but realistic finished run directory, for query/aggregate/report tests (no training).

Units, dag.json and run.json are written with the real `RunDir`/`Unit`/`Store` code; each
training unit gets a `runs` row, `predictions` whose errors are chosen per fold (so every
accuracy is known by hand), and `epochs` rows. The default: CK+ (7 classes) and Oulu
(6 classes) × inception_v3 × {ce, ce>focal} × folds 1–3.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.plan.dag import Unit
from orchestrator.run.rundir import RunDir

CLASSES = {
    "ckplus": ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"],
    "oulu": ["anger", "disgust", "fear", "happiness", "sadness", "surprise"],
}
IMAGES_PER_FOLD = {"ckplus": 14, "oulu": 12}  # two images per class
# wrong predictions per (dataset, strategy) and fold 1, 2, 3
ERRORS = {
    ("ckplus", "ce"): [2, 1, 3],
    ("ckplus", "ce>focal"): [1, 1, 2],
    ("oulu", "ce"): [3, 2, 4],
    ("oulu", "ce>focal"): [2, 3, 1],
}
FOCAL = {"ckplus": {"alpha": 0.25, "gamma": 0.0}, "oulu": {"alpha": None, "gamma": 0.5}}


@dataclass
class FakeRun:
    rundir: RunDir
    units: list[Unit]
    train_ids: dict[tuple[str, str, int], str] = field(default_factory=dict)  # (ds, strat, fold)

    @property
    def path(self) -> Path:
        return self.rundir.path


def accuracy(dataset: str, strategy: str, fold: int, errors=ERRORS) -> float:
    """The fake's test accuracy in percent."""
    n = IMAGES_PER_FOLD[dataset]
    return 100.0 * (n - errors[(dataset, strategy)][fold - 1]) / n


def _predictions(unit_id: str, dataset: str, fold: int, wrong: int) -> list[dict[str, Any]]:
    """Two images per class; the first `wrong` images are predicted as the next class."""
    classes = CLASSES[dataset]
    rows = []
    for i in range(IMAGES_PER_FOLD[dataset]):
        label = i % len(classes)
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


def _config(dataset: str, loss: str, selection: str) -> dict[str, Any]:
    extra = FOCAL[dataset] if loss == "focal" else {"alpha": None, "gamma": 0.0}
    return {"loss": loss, "selection": selection, "epochs": 3, "seed": 0, **extra}


def make_run(
    run_dir: Path,
    datasets: tuple[str, ...] = ("ckplus", "oulu"),
    folds: tuple[int, ...] = (1, 2, 3),
    strategies: tuple[str, ...] = ("ce", "ce>focal"),
    backbone: str = "inception_v3",
    synthetic: bool = False,
    skip: set[tuple[str, str, int]] | frozenset = frozenset(),
    errors: dict[tuple[str, str], list[int]] = ERRORS,
    selection: str = "heldout",
) -> FakeRun:
    """Write the fake run; `skip` lists (dataset, strategy, fold) units left unfinished."""
    rundir = RunDir(run_dir)
    rundir.claim("fake", Path("jobs/fake.yaml"))
    units: list[Unit] = []
    fake = FakeRun(rundir, units)
    for dataset in datasets:
        prepare_id = f"prep-{dataset}"
        units.append(
            Unit(
                id=prepare_id,
                kind="prepare",
                name=f"{dataset}/prepare",
                dataset=dataset,
                deps=(),
                spec={"dataset": dataset, "name": dataset, "synthetic": synthetic},
            )
        )
        n_images = IMAGES_PER_FOLD[dataset] * 10
        rundir.store.write(
            "prepare",
            prepare_id,
            [
                {
                    "unit_id": prepare_id,
                    "dataset": dataset,
                    "kind": dataset,
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
        for fold in folds:
            for strategy in strategies:
                _add_chain(
                    fake, dataset, backbone, strategy, fold, prepare_id, skip, errors, selection
                )
    rundir.write_dag(units)
    return fake


def _add_chain(
    fake, dataset, backbone, strategy, fold, prepare_id, skip, errors, selection
) -> None:
    losses = strategy.split(">")
    parent = None
    for stage in range(1, len(losses) + 1):
        chain = ">".join(losses[:stage])
        unit_id = f"{dataset}-{backbone}-{chain.replace('>', '_')}-f{fold}"
        if unit_id not in {u.id for u in fake.units}:
            config = _config(dataset, losses[stage - 1], selection)
            fake.units.append(
                Unit(
                    id=unit_id,
                    kind="train",
                    name=f"{dataset}/f{fold:02d}/{backbone}/{chain}",
                    dataset=dataset,
                    deps=(parent or prepare_id,),
                    stage=stage,
                    fold=fold,
                    backbone=backbone,
                    strategy=chain,
                    strategies=(strategy,) if stage == len(losses) else (),
                    spec={"unit_id": unit_id, "config": config, "strategy": chain},
                )
            )
            fake.train_ids[(dataset, chain, fold)] = unit_id
            if (dataset, chain, fold) not in skip:
                _write_unit(
                    fake.rundir,
                    unit_id,
                    parent,
                    dataset,
                    backbone,
                    chain,
                    stage,
                    fold,
                    config,
                    errors,
                )
        parent = unit_id


def _write_unit(rundir, unit_id, parent, dataset, backbone, chain, stage, fold, config, errors):
    wrong = errors[(dataset, chain)][fold - 1]
    n = IMAGES_PER_FOLD[dataset]
    alpha = config["alpha"]
    rundir.store.write_unit(
        unit_id,
        {
            "run": {
                "unit_id": unit_id,
                "parent_id": parent,
                "grid": "fake",
                "dataset": dataset,
                "fold": fold,
                "backbone": backbone,
                "strategy": chain,
                "stage": stage,
                "loss": config["loss"],
                "alpha": None if alpha is None else str(alpha),
                "gamma": float(config["gamma"]),
                "selection": config["selection"],
                "seed": 0,
                "epochs": 3,
                "best_epoch": 2,
                "selection_accuracy": (n - wrong) / n,
                "test_accuracy": (n - wrong) / n,
                "n_test": n,
                "train_seconds": 10.0 + fold,
                "images_per_second": 100.0,
                "startup_seconds": 2.0,
                "device": "cpu",
                "host": "node1",
                "scheduler": "local",
                "job_id": "1",
                "requeues": 0,
                "started_at": 1_700_000_000.0 + fold,
                "finished_at": 1_700_000_100.0 + fold,
            },
            "predictions": _predictions(unit_id, dataset, fold, wrong),
            "epochs": [
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
            ],
        },
    )
