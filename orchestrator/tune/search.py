"""The Ray Tune experiment of a search: Tuner, scheduler, resume, and the `trials` rows.

Resume. The experiment lives in RUN_DIR/tune/<experiment>/ (the name is a hash of the search
space, scheduler, seed and the stage-1 parents). Running `tune` again restores it with
`Tuner.restore`: finished trials are not run again; unfinished ones restart and their splits
resume from their last epoch. Tune does not save the scheduler's state, so `ResumableASHA`
replays each restored trial's reported history into its rungs: the early-stopping decisions
after a restore are the ones an uninterrupted search would have made.

Rows. A driver-side callback writes a trial's row to the `trials` table as soon as the trial
finishes (complete, stopped early by ASHA, or failed), so an interrupted search keeps them;
after the search every row is rewritten with the chosen trial marked.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from fer_core.config import StageConfig
from fer_core.errors import FerError
from orchestrator.plan.dag import content_id
from orchestrator.plan.profiles import RayProfile
from orchestrator.run.rundir import RunDir
from orchestrator.tune.records import SearchSplit, TrialChoice, TrialRow, read_trials
from orchestrator.tune.space import TuneSpec
from orchestrator.tune.trial import (
    METRIC,
    TIME_ATTR,
    config_id,
    read_history,
    run_trial,
    split_records,
)

COMPLETE, STOPPED, ERROR = "complete", "stopped", "error"


def _scheduler_classes():
    from ray.tune.schedulers import ASHAScheduler

    class ResumableASHA(ASHAScheduler):
        """ASHA whose rungs survive `Tuner.restore` (rebuilt from the trials' history files)."""

        def __init__(self, run_dir: str, experiment: str, **kwargs: Any):
            super().__init__(**kwargs)
            self._run_dir, self._experiment = run_dir, experiment

        def on_trial_add(self, tune_controller, trial) -> None:
            super().on_trial_add(tune_controller, trial)
            bracket = self._trial_info[trial.trial_id]
            for t, metric in read_history(
                RunDir(Path(self._run_dir)).history_path(self._experiment, trial.trial_id)
            ):
                bracket.on_result(trial, t, float(self._metric_op or 1.0) * metric)

    return ResumableASHA


def experiment_name(spec: TuneSpec, splits: list[SearchSplit]) -> str:
    """The experiment's name: a hash of the search space and the stage-1 parents (a change
    to either is a new experiment, never a resumed stale one)."""
    return "search-" + content_id(
        {"search": spec.space_identity(), "splits": [(s.fold, s.parent_id) for s in splits]}
    )


def trial_row(
    spec: TuneSpec,
    experiment: str,
    trial_id: str,
    choice: TrialChoice,
    splits: list[SearchSplit],
    stage2: StageConfig,
    run_dir: Path,
    status: str,
    seconds: float | None,
    error: str | None = None,
) -> TrialRow:
    """One row of the `trials` table (a trial is one α/γ configuration)."""
    records = split_records(run_dir, choice, splits, stage2)
    complete = all(r.complete for r in records)
    if status != ERROR:
        status = COMPLETE if complete else STOPPED
    return TrialRow(
        trial_id=trial_id,
        experiment=experiment,
        config_id=config_id(choice, splits, stage2),
        dataset=spec.dataset,
        backbone=spec.backbone,
        loss=spec.stage2,
        alpha=choice.label,
        alpha_value=choice.alpha_value,
        gamma=choice.gamma,
        search_folds=[r.fold for r in records],
        fold_inner_accuracy=[r.best for r in records],
        fold_best_epoch=[r.best_epoch for r in records],
        folds_done=sum(1 for r in records if r.complete),
        epochs_done=sum(len(r.accuracies) for r in records),
        max_epochs=spec.budget,
        inner_val_mean=sum(r.best for r in records) / len(records) if complete else math.nan,
        inner_val_last=_last_metric(run_dir, experiment, trial_id),
        stopped_early=status == STOPPED,
        status=status,
        error=error,
        selection="inner",
        seconds=seconds,
        chosen=False,
        recorded_at=time.time(),
    )


def _last_metric(run_dir: Path, experiment: str, trial_id: str) -> float:
    history = read_history(RunDir(run_dir).history_path(experiment, trial_id))
    return history[-1][1] if history else math.nan


def _error_line(trial: Any) -> str:
    try:
        lines = [x for x in Path(trial.error_file).read_text().splitlines() if x.strip()]
    except (OSError, TypeError):
        lines = []
    return lines[-1].strip()[:300] if lines else "trial failed"


def make_callback(
    spec: TuneSpec,
    experiment: str,
    splits: list[SearchSplit],
    stage2: StageConfig,
    run_dir: Path,
    total: int,
) -> Any:
    """Driver-side: write each finished trial's row at once and print one line for it."""
    from ray import tune

    class TrialRecorder(tune.Callback):
        def __init__(self) -> None:
            self.count = 0
            self.started = time.monotonic()

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._record(trial, None)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._record(trial, _error_line(trial))

        def _record(self, trial, error: str | None) -> None:
            seconds = (trial.last_result or {}).get("time_total_s")
            row = trial_row(
                spec,
                experiment,
                trial.trial_id,
                TrialChoice.from_config(trial.config),
                splits,
                stage2,
                run_dir,
                ERROR if error else "",
                seconds,
                error,
            )
            RunDir(run_dir).store.write("trials", trial.trial_id, [row])
            self.count += 1
            score = row["inner_val_mean"] if row["status"] == COMPLETE else row["inner_val_last"]
            detail = {
                COMPLETE: f"inner-val {100 * score:.2f}%",
                STOPPED: f"stopped early by ASHA after {row['epochs_done']}/{row['max_epochs']}"
                f" epochs (running inner-val {100 * score:.2f}%)",
                ERROR: f"failed: {error}",
            }[row["status"]]
            print(
                f"  trial {self.count:>3}/{total} {time.monotonic() - self.started:6.1f}s "
                f"α={row['alpha']:<17} γ={row['gamma']:<6.3g} {detail}",
                file=sys.stdout,
                flush=True,
            )

    return TrialRecorder()


def param_space(spec: TuneSpec) -> dict[str, Any]:
    from ray import tune

    if spec.search_alg == "grid":
        return {
            "alpha": tune.grid_search(list(spec.alpha)),
            "gamma": tune.grid_search(list(spec.gamma_grid())),
        }
    if spec.gamma_values is not None:
        gamma = tune.choice(list(spec.gamma_values))
    else:
        low, high = spec.gamma_range or (0.0, 0.0)
        gamma = tune.uniform(low, high) if high > low else low
    return {"alpha": tune.choice(list(spec.alpha)), "gamma": gamma}


def run_search(
    spec: TuneSpec,
    rundir: RunDir,
    experiment: str,
    splits: list[SearchSplit],
    settings: RayProfile,
) -> list[TrialRow]:
    """Run (or resume) the experiment; returns one row per trial of it, or raises FerError
    when the search did not finish (interrupted: run `tune` again to resume)."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # else verbose=0 still prints a banner
    stage2 = spec.stage2_config()
    storage = rundir.tune_dir
    path = storage / experiment
    threads = max(1, int(settings.cpus_per_trial))
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            splits=splits,
            stage2=stage2,
            run_dir=str(rundir.path),
            experiment=experiment,
            threads=threads,
        ),
        settings.resources_per_trial,
    )
    total = spec.n_trials()
    if tune.Tuner.can_restore(str(path)):
        print(f"search {experiment}: resuming (finished trials are kept)", flush=True)
        tuner = tune.Tuner.restore(
            str(path), trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        if spec.scheduler.type == "asha":
            scheduler = _scheduler_classes()(
                str(rundir.path),
                experiment,
                time_attr=TIME_ATTR,
                max_t=spec.budget,
                grace_period=spec.scheduler.grace_period,
                reduction_factor=spec.scheduler.reduction_factor,
            )
        else:
            from ray.tune.schedulers import FIFOScheduler

            scheduler = FIFOScheduler()
        concurrent = spec.max_concurrent or settings.max_concurrent or 0
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(spec),
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode="max",
                scheduler=scheduler,
                search_alg=BasicVariantGenerator(random_state=spec.seed, max_concurrent=concurrent),
                num_samples=spec.samples,
                reuse_actors=True,  # one torch import per worker, not per trial
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_name,
            ),
            run_config=tune.RunConfig(
                name=experiment,
                storage_path=str(storage),
                failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                callbacks=[make_callback(spec, experiment, splits, stage2, rundir.path, total)],
                verbose=0,
            ),
        )
    results = tuner.fit()
    return _rows_after(spec, rundir, experiment, splits, stage2, results, total)


def _trial_name(trial: Any) -> str:
    return str(trial.trial_id)


def _rows_after(
    spec: TuneSpec,
    rundir: RunDir,
    experiment: str,
    splits: list[SearchSplit],
    stage2: StageConfig,
    results: Any,
    total: int,
) -> list[TrialRow]:
    """Rows of every trial of the experiment; FerError if any did not finish."""
    trials = read_trials(rundir.store)
    recorded = {r["trial_id"]: r for r in trials if r["experiment"] == experiment}
    rows: list[TrialRow] = []
    unfinished = 0
    for result in results:
        trial_id = Path(result.path).name
        row = recorded.get(trial_id)
        if row is None:  # it never finished: the search was interrupted while it ran
            unfinished += 1
            continue
        # Rebuild from the files (a row written by the callback may predate the last epoch).
        rows.append(
            trial_row(
                spec,
                experiment,
                trial_id,
                TrialChoice.from_config(result.config),
                splits,
                stage2,
                rundir.path,
                row["status"] if row["status"] == ERROR else "",
                row["seconds"],
                row["error"],
            )
            if result.config
            else row
        )
    missing = total - len(rows)
    if unfinished or missing:
        raise FerError(
            f"search {experiment}: {len(rows)} of {total} trials finished (interrupted); run "
            "`tune` again with the same --run-dir to resume: finished trials are kept"
        )
    return rows
