"""One search trial, inside a Ray worker: stage 2 with one (α, γ) on every search split, each
started from that split's stage-1 checkpoint, in a fixed split order.

What a trial reports to Tune after each epoch: `epochs_done` (epochs across splits so far, the
scheduler's clock: every trial runs the splits in the same order, so ASHA compares like with
like) and `inner_val_running` (the mean over splits of the best inner-validation accuracy so
far, the split in progress included). Its final objective is the mean over splits of each
split's best inner-validation accuracy. The test folds are never loaded into a trial: the
splits come from the development subjects only (see orchestrator.tune.space).

Files (RUN_DIR/tune/):
- `trials/<config id>/split-<k>/`: the run_unit work dir (last.pt, best.pt) and `split.json`
  (the unit spec and the inner-validation accuracy of every epoch so far). Keyed by a content
  hash of the configuration, so a restarted trial resumes from its last epoch.
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
from pathlib import Path
from typing import Any

from fer_core.io import atomic_write_text
from fer_core.runtime import use_threads
from orchestrator.plan.dag import content_id
from orchestrator.run.tblog import TB_DIR, EventWriter
from orchestrator.tune.space import INVERSE_FREQUENCY

TUNE_DIR = "tune"
SPLIT_FILE = "split.json"
METRIC = "inner_val_running"
TIME_ATTR = "epochs_done"


def tune_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / TUNE_DIR


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


def trial_dir(run_dir: str | Path, cid: str) -> Path:
    return tune_dir(run_dir) / "trials" / cid


def split_dir(run_dir: str | Path, cid: str, fold: int) -> Path:
    return trial_dir(run_dir, cid) / f"split-{fold}"


def trial_events_dir(run_dir: str | Path, config: dict[str, Any], cid: str, fold: int) -> Path:
    """A trial split's TensorBoard run, beside the units' (orchestrator.run.tblog):
    `RUN_DIR/tensorboard/tune/alpha=A,gamma=G-<config id>/split-K`."""
    from orchestrator.tune.space import alpha_label

    name = f"alpha={alpha_label(config.get('alpha'))},gamma={float(config['gamma']):g}-{cid[:8]}"
    return (
        Path(run_dir)
        / TB_DIR
        / "tune"
        / re.sub(r"[^A-Za-z0-9._=,+-]+", "_", name)
        / (f"split-{fold}")
    )


def history_path(run_dir: str | Path, experiment: str, trial_id: str) -> Path:
    return tune_dir(run_dir) / experiment / "history" / f"{trial_id}.jsonl"


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


def unit_spec(split: dict[str, Any], stage2: dict[str, Any], config: dict[str, Any]) -> dict:
    """The run_unit spec of one split of a trial (stage 2 from the split's stage-1 unit)."""
    stage_config = {
        **stage2,
        "alpha": resolve_alpha(config["alpha"], split),
        "gamma": float(config["gamma"]),
    }
    return {
        "unit_id": content_id(
            {"kind": "tune-trial", "parent": split["parent_id"], "config": stage_config}
        ),
        "grid": split["grid"],
        "dataset": split["dataset"],
        "data_dir": split["data_dir"],
        "fold": split["fold"],
        "n_folds": split["n_folds"],
        "backbone": split["backbone"],
        "weights": split["weights"],
        "input_size": split["input_size"],
        "device": split["device"],
        "strategy": split["strategy"],
        "stage": 2,
        "config": stage_config,
        "parent_id": split["parent_id"],
        "parent_dir": split["parent_dir"],
    }


def read_split(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / SPLIT_FILE).read_text())
    except (OSError, ValueError):
        return {}


def split_records(
    run_dir: str | Path, config: dict[str, Any], splits: list[dict[str, Any]], stage2: dict
) -> list[dict[str, Any]]:
    """Per split: fold, the inner-val accuracy of each epoch so far, best, complete."""
    cid = config_id(config, splits, stage2)
    epochs = int(stage2["epochs"])
    records = []
    for split in splits:
        body = read_split(split_dir(run_dir, cid, split["fold"]))
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
    from fer_core.unit import run_unit

    trial_id = tune.get_context().get_trial_id()
    cid = config_id(config, splits, stage2)
    history = history_path(run_dir, experiment, trial_id)
    _append_line(
        tune_dir(run_dir) / experiment / "invocations.jsonl",
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

    lock_path = trial_dir(run_dir, cid) / ".lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        # Two trials of a random search over a discrete space can draw the same (α, γ): the
        # second waits here and then finds the work done instead of training it concurrently.
        fcntl.flock(lock, fcntl.LOCK_EX)
        bests = _train_splits(config, splits, stage2, run_dir, cid, run_unit, report)
    total = epochs * len(splits)
    if last_reported != total:  # every split was already trained (a restarted trial)
        report(total, sum(bests) / len(bests), folds_done=len(splits))


def _train_splits(config, splits, stage2, run_dir, cid, run_unit, report) -> list[float]:
    """Stage 2 on each split in order; returns each split's best inner-val accuracy."""
    epochs = int(stage2["epochs"])
    bests: list[float] = []
    for position, split in enumerate(splits):
        work_dir = split_dir(run_dir, cid, split["fold"])
        spec = unit_spec(split, stage2, config)
        body = read_split(work_dir)
        body.update(spec=spec, config_id=cid, fold=split["fold"])
        body.setdefault("accuracies", [])

        def on_epoch(
            record: dict[str, Any], body=body, position=position, split=split, work_dir=work_dir
        ) -> None:
            accuracies = body["accuracies"][: record["epoch"] - 1] + [record["selection_accuracy"]]
            body["accuracies"] = accuracies
            atomic_write_text(work_dir / SPLIT_FILE, json.dumps(body, indent=1))
            running = sum(bests + [max(accuracies)]) / (len(bests) + 1)
            report(
                position * epochs + record["epoch"],
                running,
                fold=split["fold"],
                inner_val=record["selection_accuracy"],
                folds_done=position,
            )

        work_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(work_dir / SPLIT_FILE, json.dumps(body, indent=1))
        events = EventWriter(trial_events_dir(run_dir, config, cid, split["fold"]))

        def on_epoch_logged(record: dict[str, Any], on_epoch=on_epoch, events=events) -> None:
            events.epoch(record)  # before the report: ASHA may stop the trial inside it
            on_epoch(record)

        result = run_unit(spec, work_dir, on_epoch=on_epoch_logged, score_test=False)
        run = result["run"]
        body.update(
            accuracies=[e["selection_accuracy"] for e in result["epochs"]],
            parent_weights_sha=run.get("parent_weights_sha"),
            start_weights_sha=run.get("start_weights_sha"),
            train_seconds=run.get("train_seconds"),
        )
        atomic_write_text(work_dir / SPLIT_FILE, json.dumps(body, indent=1))
        bests.append(float(run["selection_accuracy"]))
    return bests
