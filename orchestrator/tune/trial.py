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
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fer_core.config import StageConfig
from fer_core.errors import FerError
from fer_core.io import atomic_write_text
from fer_core.records import EpochRecord
from fer_core.runtime import use_threads
from fer_core.spec import UnitSpec
from orchestrator.backends.ray.trial import trial_env
from orchestrator.plan.dag import content_id, train_spec
from orchestrator.run.rundir import TRIAL, RunDir
from orchestrator.tune.records import (
    FinishedSplitFile,
    HistoryLine,
    Invocation,
    SearchSplit,
    SplitRecord,
    TrialChoice,
    read_split_file,
)

SPLIT_FILE = "split.json"
METRIC = "inner_val_running"
TIME_ATTR = "epochs_done"


Report = Callable[..., None]  # report(epochs_done, running metric, **extra metrics)


def config_id(choice: TrialChoice, splits: list[SearchSplit], stage2: StageConfig) -> str:
    """A content hash of what a trial trains: α choice, γ, stage-2 settings, stage-1 parents."""
    return content_id(
        {
            "alpha": choice.alpha,
            "gamma": choice.gamma,
            "stage2": stage2.to_dict(),
            "parents": [(split.fold, split.parent_id) for split in splits],
        }
    )


def trial_name(choice: TrialChoice, cid: str, fold: int) -> str:
    """A trial split's unit name, also its TensorBoard run under `tensorboard/tune/`:
    `alpha=A,gamma=G-<config id>/split-K`."""
    name = f"alpha={choice.label},gamma={choice.gamma:g}-{cid[:8]}"
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


def unit_spec(
    rundir: RunDir, split: SearchSplit, stage2: StageConfig, choice: TrialChoice
) -> UnitSpec:
    """The spec of one split of a trial: the next stage after the split's stage-1 unit
    (`split.parent`), with the trial's α and γ."""
    stage_config = {**stage2.to_dict(), "alpha": choice.alpha_for(split), "gamma": choice.gamma}
    unit_id = content_id({"kind": "tune-trial", "parent": split.parent_id, "config": stage_config})
    return train_spec(
        rundir,
        asdict(split.parent),
        unit_id,
        split.strategy,
        split.parent.stage + 1,
        stage_config,
        split.parent_id,
    )


def split_records(
    run_dir: str | Path, choice: TrialChoice, splits: list[SearchSplit], stage2: StageConfig
) -> list[SplitRecord]:
    """Each split of a trial as far as its `split.json` goes."""
    rundir = RunDir(Path(run_dir))
    cid = config_id(choice, splits, stage2)
    records = []
    for split in splits:
        body = read_split_file(rundir.trial_split_dir(cid, split.fold) / SPLIT_FILE)
        accuracies = tuple(float(a) for a in body["accuracies"]) if body else ()
        records.append(SplitRecord(split.fold, accuracies, stage2.epochs))
    return records


def _append_line(path: Path, record: HistoryLine | Invocation) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def run_trial(
    config: dict[str, Any],
    *,
    splits: list[SearchSplit],
    stage2: StageConfig,
    run_dir: str,
    experiment: str,
    threads: int = 1,
) -> None:
    """The Tune function trainable (bound with tune.with_parameters); `config` is Ray's."""
    from ray import tune

    choice = TrialChoice.from_config(config)
    use_threads(threads)
    rundir = RunDir(Path(run_dir))
    trial_id = tune.get_context().get_trial_id()
    os.environ.update(trial_env(experiment))  # the runs rows' scheduler and job id (worker.py)
    cid = config_id(choice, splits, stage2)
    history = rundir.history_path(experiment, trial_id)
    _append_line(
        rundir.invocations_path(experiment),
        Invocation(trial_id=trial_id, config_id=cid, pid=os.getpid(), at=time.time()),
    )
    last_reported = -1

    def report(done: int, running: float, **extra: Any) -> None:
        nonlocal last_reported
        # The history line goes first: a report may not return (ASHA stops the trial there).
        _append_line(history, HistoryLine(t=done, metric=running))
        last_reported = done
        tune.report({TIME_ATTR: done, METRIC: running, "config_id": cid, **extra})

    lock_path = rundir.trial_lock(cid)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        # Two trials of a random search over a discrete space can draw the same (α, γ): the
        # second waits here and then finds the work done instead of training it concurrently.
        fcntl.flock(lock, fcntl.LOCK_EX)
        bests = train_splits(choice, splits, stage2, rundir, cid, report)
    total = stage2.epochs * len(splits)
    if last_reported != total:  # every split was already trained (a restarted trial)
        report(total, sum(bests) / len(bests), folds_done=len(splits))


def train_splits(
    choice: TrialChoice,
    splits: list[SearchSplit],
    stage2: StageConfig,
    rundir: RunDir,
    cid: str,
    report: Report,
) -> list[float]:
    """Stage 2 on each split in order, each split a unit run by the launch units' worker;
    returns each split's best inner-val accuracy."""
    from orchestrator.run.worker import output_to, run

    epochs = stage2.epochs
    bests: list[float] = []
    for position, split in enumerate(splits):
        split_path = rundir.trial_split_dir(cid, split.fold)
        spec = unit_spec(rundir, split, stage2, choice)
        unit_id = spec.unit_id
        old = read_split_file(split_path / SPLIT_FILE)
        # Keys keep their place in a file written before (its bytes change only by value).
        body: FinishedSplitFile = {
            **(old or {}),  # type: ignore[typeddict-item]
            "spec": asdict(spec),
            "unit_id": unit_id,
            "config_id": cid,
            "fold": split.fold,
            "accuracies": old["accuracies"] if old else [],
        }

        def on_epoch(
            record: EpochRecord,
            body: FinishedSplitFile = body,
            position: int = position,
            split: SearchSplit = split,
            path: Path = split_path,
        ) -> None:
            accuracies = body["accuracies"][: record["epoch"] - 1] + [record["selection_accuracy"]]
            body["accuracies"] = accuracies
            atomic_write_text(path / SPLIT_FILE, json.dumps(body, indent=1))
            running = sum(bests + [max(accuracies)]) / (len(bests) + 1)
            report(
                position * epochs + record["epoch"],
                running,
                fold=split.fold,
                inner_val=record["selection_accuracy"],
                folds_done=position,
            )

        atomic_write_text(split_path / SPLIT_FILE, json.dumps(body, indent=1))
        rundir.write_spec(unit_id, TRIAL, trial_name(choice, cid, split.fold), body["spec"])
        with output_to(rundir.unit_log(unit_id, "ray")):
            run(rundir.path, unit_id, on_epoch=on_epoch)
        runs, epoch_rows = (rundir.store.read(table, {unit_id}) for table in ("runs", "epochs"))
        if runs is None or epoch_rows is None:  # run() raised if the unit failed
            raise FerError(f"unit {unit_id}: done, but its runs/epochs rows are missing")
        run_row = runs.to_pylist()[0]
        body.update(
            {
                "accuracies": [e["selection_accuracy"] for e in epoch_rows.to_pylist()],
                "parent_weights_sha": run_row.get("parent_weights_sha"),
                "start_weights_sha": run_row.get("start_weights_sha"),
                "train_seconds": run_row.get("train_seconds"),
            }
        )
        atomic_write_text(split_path / SPLIT_FILE, json.dumps(body, indent=1))
        bests.append(float(run_row["selection_accuracy"]))
    return bests
