"""`tune`: a Ray Tune search over stage-2 focal α and γ with nested model selection.

    python -m orchestrator tune --grid tune [--cluster ray|local|slurm] [--samples N]

The steps, all into one run directory (re-running resumes each of them):
1. Prepare the dataset (a normal store unit).
2. Split off the development subjects (every fold but `search.test_folds`) as their own
   dataset (a manifest of the same images, re-split into `inner_folds` subject folds), then
   train stage 1 once per search split there, and stage 1 once per test fold on the full
   dataset: normal, content-addressed store units, run by the profile's backend.
3. The search: one Tune trial per (α, γ), each training stage 2 from the splits' stage-1
   checkpoints (never retraining stage 1); objective: the mean over splits of the best
   inner-validation accuracy; ASHA stops poor trials early (orchestrator.tune.search).
4. Choose the configuration with the best objective (nothing else is looked at), then train
   it as normal store units on each test fold (stage 2 from that fold's stage 1, selection
   inner) and score the test folds: the nested estimate, reported with its per-fold spread.
   With `paper_protocol: true` the chosen configuration is also trained with the paper's
   selection (test fold picks the epochs) and reported beside it, labelled as optimistic.
Outputs: the `trials` table, RUN_DIR/tune/choice.json, and a section of the report.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fer_core.errors import FerError
from fer_core.io import atomic_write_text
from fer_core.spec import UnitSpec
from orchestrator.backends import make_backend
from orchestrator.backends.base import Backend
from orchestrator.backends.ray.cluster import check_fits, ray_session
from orchestrator.plan.dag import content_id, expand
from orchestrator.plan.grid import DatasetSpec, Experiment, Grid, parse_data_roots
from orchestrator.plan.labels import distinct_names
from orchestrator.plan.profiles import LocalProfile, RayProfile, SlurmProfile, load_profile
from orchestrator.plan.unit import Unit
from orchestrator.run.lineage import reset_stale
from orchestrator.run.rundir import RunDir
from orchestrator.run.states import State
from orchestrator.run.status import unit_states
from orchestrator.texttable import quantity
from orchestrator.tune.records import (
    ChoiceRecord,
    SchedulerRecord,
    Scores,
    SearchSpace,
    SearchSplit,
    TrialRow,
    read_choice,
)
from orchestrator.tune.space import INVERSE_FREQUENCY, TuneSpec, alpha_label, load_tune

# profile keys that make a training unit several ranks (D-24): `launch` only
RANK_KEYS = ("procs_per_unit", "gpus_per_unit", "nodes_per_unit")


@dataclass(frozen=True)
class TuneRequest:
    """What the `tune` command was asked for (the command line, typed)."""

    grid: str = "tune"
    cluster: str = "ray"
    cluster_file: Path | None = None
    run_dir: Path | None = None  # default: runs/GRID
    samples: int | None = None  # overrides the grid's search.samples
    data: tuple[str, ...] = ()  # NAME=DIR pairs
    nodes: int | None = None  # SLURM nodes for the Ray cluster (--cluster slurm)
    dry_run: bool = False
    settings: tuple[str, ...] = ()  # --set KEY=VALUE pairs


def run_tune(args: TuneRequest) -> int:
    """The `tune` command; returns the exit status."""
    started = time.monotonic()
    spec = load_tune(args.grid, parse_data_roots(args.data), args.samples, args.settings)
    profile = load_profile(args.cluster, args.cluster_file)
    ranks = {k: getattr(profile, k) for k in RANK_KEYS if getattr(profile, k, 1) > 1}
    if ranks:
        raise FerError(
            f"--cluster {args.cluster}: {', '.join(f'{k}: {v}' for k, v in ranks.items())}: "
            "a search runs each trial as one process; data-parallel units are for `launch` "
            "(use a profile without these keys)"
        )
    run_dir = args.run_dir or RunDir.default_path(spec.grid.name)
    if args.dry_run and not isinstance(profile, SlurmProfile):
        print_plan(spec, run_dir)
        return 0
    if isinstance(profile, SlurmProfile):
        from orchestrator.tune.slurm import submit_tune_job

        return submit_tune_job(spec, args, profile, run_dir)
    settings = ray_settings(profile)
    with ray_session(settings) as resources:
        check_fits(settings, resources, f"--cluster {args.cluster}")
        rundir = RunDir(run_dir)
        rundir.claim(spec.grid.name, spec.path)
        rundir.write_profile(args.cluster, args.cluster_file)
        with rundir.launch_lock():
            rundir.write_grid(spec.effective)
            choice = TuneRun(spec, rundir, make_backend(profile), settings).run(started)
    from orchestrator.report.document import write_report

    report = write_report(rundir.path)
    print(summary(choice))
    print(f"report: {report.path}")
    return 0


def ray_settings(profile: LocalProfile | RayProfile) -> RayProfile:
    """Where trials run: the `ray` profile itself, or a local Ray sized like `local`."""
    if isinstance(profile, RayProfile):
        return profile
    threads = profile.threads_per_job
    cpus = profile.jobs * threads
    return RayProfile(num_cpus=min(cpus, os.cpu_count() or cpus), cpus_per_trial=threads)


def print_plan(spec: TuneSpec, run_dir: Path) -> None:
    print(f"tune grid {spec.path}; run dir {run_dir}")
    print(f"  {spec.dataset} · {spec.backbone}: {spec.strategy}, stage 2 searched")
    print(f"  test folds (held out of the search): {list(spec.test_folds)}")
    print(
        f"  development subjects re-split into {spec.inner_folds} inner folds; "
        f"trials train on splits {list(spec.search_folds)}"
    )
    print(
        f"  α ∈ {{{spec.describe_alpha()}}}, γ ∈ {spec.describe_gamma()}; "
        f"{spec.search_alg} search, {spec.n_trials()} trials, seed {spec.seed}"
    )
    print(
        f"  scheduler {spec.scheduler.type}: {spec.budget} epochs per trial, grace "
        f"{spec.scheduler.grace_period}, reduction factor {spec.scheduler.reduction_factor:g}"
    )
    print("  dry run: nothing run")


class TuneRun:
    """The steps of one `tune` call on one run dir (each step skips what is done)."""

    def __init__(self, spec: TuneSpec, rundir: RunDir, backend: Backend, settings: RayProfile):
        self.spec, self.rundir, self.backend, self.settings = spec, rundir, backend, settings
        self.dag: list[Unit] = []
        dataset = spec.grid.datasets[spec.dataset]
        self.base = replace(spec.grid, datasets={spec.dataset: dataset})
        self.digests = rundir.digest_cache()  # one for every expansion of this call

    def _expand(self, grid: Grid) -> list[Unit]:
        """`expand` with the run's file digests, kept for the next expansion and the next
        call (a real dataset's images are hashed once, not once per expansion)."""
        units = expand(grid, self.rundir.path, digests=self.digests)
        if self.digests.dirty:
            self.digests.save()
        return units

    def run(self, started: float) -> ChoiceRecord:
        from orchestrator.tune.search import experiment_name, run_search

        spec = self.spec
        stage1_grid = self._grid(strategy=spec.stage1)
        full = self._expand(stage1_grid)
        prepare = full[0]
        self._run_units([prepare], "prepare the data")
        full_index = _read_index(prepare)
        dev_grid = self._dev_grid(full_index)
        dev = self._expand(dev_grid)
        stage1 = full[1:]
        if spec.paper_protocol:
            stage1 += self._expand(replace(stage1_grid, selection="heldout"))[1:]
        self._run_units(dev + stage1, "train stage 1 (search splits and test folds)")
        splits = self._splits(dev)
        experiment = experiment_name(spec, splits)
        print(
            f"search {experiment}: {spec.n_trials()} trials of α ∈ {{{spec.describe_alpha()}}}, "
            f"γ ∈ {spec.describe_gamma()} on {len(splits)} inner splits",
            flush=True,
        )
        rows = run_search(spec, self.rundir, experiment, splits, self.settings)
        chosen = choose(rows)
        for row in rows:
            row["chosen"] = row["trial_id"] == chosen["trial_id"]
            self.rundir.store.write("trials", row["trial_id"], [row])
        final = self._final_units(chosen, full_index, "inner")
        paper = self._final_units(chosen, full_index, "heldout") if spec.paper_protocol else []
        self._run_units(final + paper, "train the chosen configuration on the test folds")
        choice = self._choice(experiment, chosen, rows, final, paper, stage1, started)
        atomic_write_text(self.rundir.choice_path, json.dumps(choice, indent=1))
        return choice

    # --- grids and units ----------------------------------------------------------------
    def _grid(self, strategy: str, **changes: Any) -> Grid:
        experiment = Experiment((self.spec.backbone,), (strategy,))
        return replace(self.base, experiments=(experiment,), **changes)

    def _dev_grid(self, full_index: Any) -> Grid:
        """The development subjects as a manifest dataset, re-split into inner folds by the
        dataset's own fold rule."""
        spec = self.spec
        manifest = write_dev_manifest(full_index, spec.test_folds, self.rundir.tune_dir)
        subjects = {r.subject for r in full_index.records if r.fold not in spec.test_folds}
        if len(subjects) < spec.inner_folds:
            raise FerError(
                f"{spec.path}: search.inner_folds: {spec.inner_folds} folds need as many "
                f"development subjects, but only {len(subjects)} are left; use fewer"
            )
        dataset = spec.grid.datasets[spec.dataset]
        dev = DatasetSpec(
            name=spec.dev_name,
            kind="manifest",
            root=full_index.root,
            manifest=str(manifest),
            crop_size=dataset.crop_size,
            detector=dataset.detector,
            n_folds=spec.inner_folds,
            fold_rule=dataset.fold_rule,
        )
        return replace(self._grid(spec.stage1), datasets={dev.name: dev}, folds=spec.search_folds)

    def _splits(self, dev: list[Unit]) -> list[SearchSplit]:
        """One per search split: its stage-1 unit and that split's inverse-frequency α."""
        index = _read_index(dev[0])
        by_fold = {u.fold: u for u in dev if u.kind == "train"}
        return [
            SearchSplit(
                fold=fold,
                parent_id=by_fold[fold].id,
                parent=UnitSpec.from_dict(by_fold[fold].spec),
                strategy=self.spec.strategy,
                inverse_frequency=tuple(inverse_frequency(index, fold)),
            )
            for fold in self.spec.search_folds
        ]

    def _final_units(self, chosen: TrialRow, index: Any, selection: str) -> list[Unit]:
        """The chosen configuration's chain on each test fold (stage 1 is already done)."""
        units: dict[str, Unit] = {}
        dataset = self.base.datasets[self.spec.dataset]
        for fold in self.spec.test_folds:
            alpha: float | list[float] | None = chosen["alpha_value"]
            if chosen["alpha"] == INVERSE_FREQUENCY:
                alpha = inverse_frequency(index, fold)
            focal = {"alpha": alpha, "gamma": chosen["gamma"]}
            grid = self._grid(
                self.spec.strategy,
                folds=(fold,),
                selection=selection,
                datasets={dataset.name: replace(dataset, focal=focal)},
            )
            for unit in self._expand(grid):
                units.setdefault(unit.id, unit)
        return [u for u in units.values() if u.kind == "train" and u.stage == 2]

    def _run_units(self, units: list[Unit], what: str) -> None:
        """Submit the units not done yet; FerError if any does not finish."""
        known = {u.id for u in self.dag}
        for unit in units:
            if unit.id not in known:
                known.add(unit.id)
                self.dag.append(unit)
        self.dag = distinct_names(self.dag)  # e.g. the heldout and inner stage 1 of a fold
        named = {u.id: u for u in self.dag}
        units = [named[u.id] for u in units]
        self.rundir.write_dag(self.dag)
        reset_stale(self.rundir, units, self.digests, sys.stdout)
        states = unit_states(self.rundir, units, self.backend, self.digests)
        todo = [u for u in units if states[u.id] != State.DONE]
        if not todo:
            print(f"{what}: {len(units)} units already done", flush=True)
            return
        print(
            f"{what}: {len(todo)} units on {self.backend.name} "
            f"({len(units) - len(todo)} already done)",
            flush=True,
        )
        for unit in todo:
            self.rundir.clear_failed(unit.id)
        self.backend.submit(self.rundir, todo, wait=True)
        failed = [u for u in units if not self.rundir.is_done(u.id, u.kind)]
        if failed:
            reason = self.rundir.failure(failed[0].id) or "did not finish"
            raise FerError(
                f"{len(failed)} units did not finish (first: {failed[0].name}: {reason}); see "
                f"`python -m orchestrator status --run-dir {self.rundir.path}`, then run tune "
                "again: done units and finished trials are kept"
            )

    def _choice(
        self,
        experiment: str,
        chosen: TrialRow,
        rows: list[TrialRow],
        final: list[Unit],
        paper: list[Unit],
        stage1: list[Unit],
        started: float,
    ) -> ChoiceRecord:
        spec = self.spec
        counts = {
            s: sum(1 for r in rows if r["status"] == s) for s in ("complete", "stopped", "error")
        }
        wall_seconds, chosen_at = self._timing(experiment, started)
        return ChoiceRecord(
            experiment=experiment,
            dataset=spec.dataset,
            dev_dataset=spec.dev_name,
            backbone=spec.backbone,
            strategy=spec.strategy,
            trial_id=chosen["trial_id"],
            alpha=chosen["alpha"],
            alpha_value=chosen["alpha_value"],
            gamma=chosen["gamma"],
            inner_val_mean=chosen["inner_val_mean"],
            fold_inner_accuracy=chosen["fold_inner_accuracy"],
            search_folds=list(spec.search_folds),
            inner_folds=spec.inner_folds,
            test_folds=list(spec.test_folds),
            search_space=SearchSpace(
                alpha=[alpha_label(a) for a in spec.alpha], gamma=spec.describe_gamma()
            ),
            search_alg=spec.search_alg,
            scheduler=SchedulerRecord(
                type=spec.scheduler.type,
                grace_period=spec.scheduler.grace_period,
                reduction_factor=spec.scheduler.reduction_factor,
                max_t=spec.budget,
            ),
            seed=spec.seed,
            trials=len(rows),
            trials_complete=counts["complete"],
            trials_stopped=counts["stopped"],
            trials_error=counts["error"],
            final_units={str(u.fold): u.id for u in final},
            stage1_units={
                str(u.fold): u.id for u in stage1 if u.spec["config"]["selection"] == "inner"
            },
            paper_protocol_units={str(u.fold): u.id for u in paper} or None,
            test=self._scores(final),
            paper_protocol_test=self._scores(paper) if paper else None,
            wall_seconds=wall_seconds,
            chosen_at=chosen_at,
        )

    def _timing(self, experiment: str, started: float) -> tuple[float, float]:
        """Wall time and end of the `tune` call that finished this search (a later no-op call
        that finds it done keeps those figures; a damaged choice.json is replaced)."""
        try:
            previous = read_choice(self.rundir.choice_path)
        except FerError:
            previous = None
        if previous is not None and previous["experiment"] == experiment:
            return previous["wall_seconds"], previous["chosen_at"]
        return time.monotonic() - started, time.time()

    def _scores(self, units: list[Unit]) -> Scores:
        table = self.rundir.store.read("runs", {u.id for u in units})
        rows = table.to_pylist() if table is not None else []
        per_fold = {str(r["fold"]): float(r["test_accuracy"]) for r in rows}
        values = list(per_fold.values())
        return Scores(
            per_fold=per_fold,
            mean=statistics.fmean(values) if values else math.nan,
            std=statistics.stdev(values) if len(values) > 1 else 0.0,
            n_test=sum(int(r["n_test"]) for r in rows),
        )


def choose(rows: list[TrialRow]) -> TrialRow:
    """The complete trial with the best inner-validation mean; ties go to the earlier trial.

    Only the inner-validation objective is looked at: no test fold has been scored yet.
    """
    complete = [r for r in rows if r["status"] == "complete" and math.isfinite(r["inner_val_mean"])]
    if not complete:
        errors = [r["error"] for r in rows if r.get("error")]
        raise FerError(
            "no trial completed every search split"
            + (f"; first error: {errors[0]}" if errors else "")
        )
    return max(complete, key=lambda r: (r["inner_val_mean"], -_trial_number(r["trial_id"])))


def _trial_number(trial_id: str) -> int:
    tail = trial_id.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def write_dev_manifest(index: Any, test_folds: tuple[int, ...], folder: Path) -> Path:
    """A manifest (path,subject,label,sequence,frame) of every image outside the test folds,
    named by its content (so a changed selection is a new dataset, never a stale one)."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "subject", "label", "sequence", "frame"])
    for record in index.records:
        if record.fold not in test_folds:
            writer.writerow(
                [record.path, record.subject, record.label_name, record.sequence, record.frame]
            )
    text = buffer.getvalue()
    path = folder / f"dev-{content_id({'manifest': text})}.csv"
    if not path.is_file():
        atomic_write_text(path, text)
    return path


def inverse_frequency(index: Any, fold: int) -> list[float]:
    """Per-class α from the class counts of fold `fold`'s training images (selection inner)."""
    from fer_core.data.folds import inner_validation_fold
    from fer_core.losses import inverse_frequency_alpha

    held = {fold, inner_validation_fold(fold, index.n_folds)}
    labels = [r.label for r in index.records if r.fold not in held]
    return inverse_frequency_alpha(labels, len(index.classes))


def _read_index(prepare: Unit) -> Any:
    from fer_core.data.index import DatasetIndex

    return DatasetIndex.read(Path(prepare.spec["out_dir"]) / "index.parquet")


def summary(choice: ChoiceRecord) -> str:
    test = choice["test"]
    folds = ", ".join(f"f{k} {100 * v:.1f}" for k, v in test["per_fold"].items())
    lines = [
        f"tune: chosen α={choice['alpha']} γ={choice['gamma']:.3g} on inner validation "
        f"({100 * choice['inner_val_mean']:.2f}% mean over "
        f"{quantity(len(choice['search_folds']), 'inner split')}; "
        f"{quantity(choice['trials'], 'trial')}: {choice['trials_complete']} complete, "
        f"{choice['trials_stopped']} stopped early, {choice['trials_error']} failed)",
        f"nested test accuracy on held-out folds {choice['test_folds']}: "
        f"{_mean_std(test)} ({folds})",
    ]
    paper = choice["paper_protocol_test"]
    if paper:
        lines.append(f"paper protocol (test fold picks the epochs; optimistic): {_mean_std(paper)}")
    lines.append(
        f"wall time of the tune call that finished the search: {choice['wall_seconds']:.0f}s"
    )
    return "\n".join(lines)


def _mean_std(scores: Scores) -> str:
    spread = f" ± {100 * scores['std']:.2f}" if len(scores["per_fold"]) > 1 else ""
    return f"{100 * scores['mean']:.2f}{spread}%"
