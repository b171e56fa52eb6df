"""One search trial, inside a Ray worker: stage 2 with one (α, γ) on every search split, each
started from that split's stage-1 checkpoint, in a fixed split order.

What a trial reports to Tune after each epoch: `epochs_done` (epochs across splits so far, the
scheduler's clock: every trial runs the splits in the same order, so ASHA compares like with
like) and `inner_val_running` (the mean over splits of the best inner-validation accuracy so
far, the split in progress included). Its final objective is the mean over splits of each
split's best inner-validation accuracy. The test folds are never loaded into a trial: the
splits come from the development subjects only (see orchestrator.tune.space).

Each split of a trial is a unit of its own (kind `trial`, `RUN_DIR/units/<id>/`, id a hash of
its parent and stage config), run by the same worker as every launched unit
(`orchestrator.run.worker.run`): its spec.json, work/ (last.pt, best.pt), ray.log, live.json,
failed.json with the reason when it fails, and its `runs`/`epochs` rows in the store (no test
images are scored: no predictions). Such units are not in the DAG, so the report and the
query's current views leave them out. Besides (RUN_DIR/tune/, paths from `RunDir`):
- `trials/<config id>/split-<k>/split.json`: the unit's spec and id, and the inner-validation
  accuracy of every epoch so far. Keyed by a content hash of the configuration, so a
  restarted trial resumes from its last epoch.
- `<experiment>/history/<trial id>.jsonl`: every (epochs_done, metric) reported, so that a
  restored experiment can rebuild the ASHA rungs (Tune does not save scheduler state).
- `<experiment>/invocations.jsonl`: one line per start of a trial function (resume evidence).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fer_core.errors import FerError
from fer_core.io import atomic_write_text
from fer_core.records import EpochRecord
from fer_core.runtime import use_threads
from fer_core.spec import UnitSpec
from orchestrator.plan.dag import content_id, train_spec
from orchestrator.run.rundir import TRIAL, RunDir
from orchestrator.tune.space import INVERSE_FREQUENCY

SPLIT_FILE = "split.json"
METRIC = "inner_val_running"
TIME_ATTR = "epochs_done"


def config_id(config: dict[str, Any], splits: list[dict[str, Any]], stage2: dict[str, Any]) -> str:
    """A content hash of what a trial trains: α choice, γ, stage-2 settings, stage-1 parents."""
    return content_id(
        {
            "alpha": config["alpha"],
            "gamma": float(config["gamma"]),
            "stage2": stage2,
            "parents": [(split["fold"], split["parent_id"]) for split in splits],
        }
    )


def trial_name(config: dict[str, Any], cid: str, fold: int) -> str:
    """A trial split's unit name, also its TensorBoard run under `tensorboard/tune/`:
    `alpha=A,gamma=G-<config id>/split-K`."""
    from orchestrator.tune.space import alpha_label

    name = f"alpha={alpha_label(config.get('alpha'))},gamma={float(config['gamma']):g}-{cid[:8]}"
    return f"{re.sub(r'[^A-Za-z0-9._=,+-]+', '_', name)}/split-{fold}"


def read_history(path: Path) -> list[tuple[float, float]]:
    """The (epochs_done, metric) pairs a trial reported, oldest first (torn lines skipped)."""
    if not path.is_file():
        return []
    pairs = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            pairs.append((float(record["t"]), float(record["metric"])))
        except (ValueError, KeyError, TypeError):
            continue
    return pairs


def resolve_alpha(choice: Any, split: dict[str, Any]) -> Any:
    """A trial's α choice for one split: inverse_frequency becomes that split's vector."""
    return split["inverse_frequency"] if choice == INVERSE_FREQUENCY else choice


def unit_spec(
    rundir: RunDir, split: dict[str, Any], stage2: dict[str, Any], config: dict[str, Any]
) -> UnitSpec:
    """The spec of one split of a trial: the next stage after the split's stage-1 unit
    (`split["parent"]`, its spec), with the trial's α and γ."""
    stage_config = {
        **stage2,
        "alpha": resolve_alpha(config["alpha"], split),
        "gamma": float(config["gamma"]),
    }
    parent = split["parent"]
    unit_id = content_id(
        {"kind": "tune-trial", "parent": split["parent_id"], "config": stage_config}
    )
    stage = int(parent["stage"]) + 1
    return train_spec(
        rundir, parent, unit_id, split["strategy"], stage, stage_config, split["parent_id"]
    )


def read_split(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / SPLIT_FILE).read_text())
    except (OSError, ValueError):
        return {}


def split_records(
    run_dir: str | Path, config: dict[str, Any], splits: list[dict[str, Any]], stage2: dict
) -> list[dict[str, Any]]:
    """Per split: fold, the inner-val accuracy of each epoch so far, best, complete."""
    rundir = RunDir(Path(run_dir))
    cid = config_id(config, splits, stage2)
    epochs = int(stage2["epochs"])
    records = []
    for split in splits:
        body = read_split(rundir.trial_split_dir(cid, split["fold"]))
        accuracies = [float(a) for a in body.get("accuracies", [])]
        records.append(
            {
                "fold": split["fold"],
                "accuracies": accuracies,
                "best": max(accuracies) if accuracies else float("nan"),
                "best_epoch": accuracies.index(max(accuracies)) + 1 if accuracies else 0,
                "complete": len(accuracies) >= epochs,
            }
        )
    return records


def _append_line(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def run_trial(
    config: dict[str, Any],
    *,
    splits: list[dict[str, Any]],
    stage2: dict[str, Any],
    run_dir: str,
    experiment: str,
    threads: int = 1,
) -> None:
    """The Tune function trainable (bound with tune.with_parameters)."""
    from ray import tune

    use_threads(threads)
    rundir = RunDir(Path(run_dir))
    trial_id = tune.get_context().get_trial_id()
    os.environ["FER_SCHEDULER"] = "ray"  # the runs rows' scheduler and job id (worker.py)
    os.environ["FER_JOB_ID"] = f"{experiment}/{trial_id}"
    cid = config_id(config, splits, stage2)
    history = rundir.history_path(experiment, trial_id)
    _append_line(
        rundir.invocations_path(experiment),
        {"trial_id": trial_id, "config_id": cid, "pid": os.getpid(), "at": time.time()},
    )
    epochs = int(stage2["epochs"])
    last_reported = -1

    def report(done: int, running: float, **extra: Any) -> None:
        nonlocal last_reported
        # The history line goes first: a report may not return (ASHA stops the trial there).
        _append_line(history, {"t": done, "metric": running})
        last_reported = done
        tune.report({TIME_ATTR: done, METRIC: running, "config_id": cid, **extra})

    lock_path = rundir.trial_lock(cid)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        # Two trials of a random search over a discrete space can draw the same (α, γ): the
        # second waits here and then finds the work done instead of training it concurrently.
        fcntl.flock(lock, fcntl.LOCK_EX)
        bests = train_splits(config, splits, stage2, rundir, cid, report)
    total = epochs * len(splits)
    if last_reported != total:  # every split was already trained (a restarted trial)
        report(total, sum(bests) / len(bests), folds_done=len(splits))


def train_splits(config, splits, stage2, rundir: RunDir, cid, report) -> list[float]:
    """Stage 2 on each split in order, each split a unit run by the launch units' worker;
    returns each split's best inner-val accuracy."""
    from orchestrator.run.worker import output_to, run

    epochs = int(stage2["epochs"])
    bests: list[float] = []
    for position, split in enumerate(splits):
        split_path = rundir.trial_split_dir(cid, split["fold"])
        spec = unit_spec(rundir, split, stage2, config)
        unit_id = spec.unit_id
        body = read_split(split_path)
        body.update(spec=asdict(spec), unit_id=unit_id, config_id=cid, fold=split["fold"])
        body.setdefault("accuracies", [])

        def on_epoch(
            record: EpochRecord, body=body, position=position, split=split, path=split_path
        ) -> None:
            accuracies = body["accuracies"][: record["epoch"] - 1] + [record["selection_accuracy"]]
            body["accuracies"] = accuracies
            atomic_write_text(path / SPLIT_FILE, json.dumps(body, indent=1))
            running = sum(bests + [max(accuracies)]) / (len(bests) + 1)
            report(
                position * epochs + record["epoch"],
                running,
                fold=split["fold"],
                inner_val=record["selection_accuracy"],
                folds_done=position,
            )

        atomic_write_text(split_path / SPLIT_FILE, json.dumps(body, indent=1))
        rundir.write_spec(unit_id, TRIAL, trial_name(config, cid, split["fold"]), body["spec"])
        with output_to(rundir.unit_log(unit_id, "ray")):
            run(rundir.path, unit_id, on_epoch=on_epoch)
        runs, epoch_rows = (rundir.store.read(table, {unit_id}) for table in ("runs", "epochs"))
        if runs is None or epoch_rows is None:  # run() raised if the unit failed
            raise FerError(f"unit {unit_id}: done, but its runs/epochs rows are missing")
        run_row = runs.to_pylist()[0]
        body.update(
            accuracies=[e["selection_accuracy"] for e in epoch_rows.to_pylist()],
            parent_weights_sha=run_row.get("parent_weights_sha"),
            start_weights_sha=run_row.get("start_weights_sha"),
            train_seconds=run_row.get("train_seconds"),
        )
        atomic_write_text(split_path / SPLIT_FILE, json.dumps(body, indent=1))
        bests.append(float(run_row["selection_accuracy"]))
    return bests
