"""`tune`: the α/γ search with nested selection, on a real local Ray (2 CPUs).

Two real searches on copies of the small CK+ twin share the work of the slow tests:
- A: a plain search, in this process, on the module's local Ray (`local_ray`);
- B: the same search on a copy whose test-fold labels are permuted, run by the CLI (with a
  local Ray of its own) and interrupted (SIGINT) after its first trial finished, then resumed
  in this process. Its first run goes on in the background while A runs: the two fill the
  2 cores better than one after the other.
A and B must choose the same α/γ with identical trial metrics (the test folds never reach the
search) and B's resume must run only the trials that had not finished. Trials run one at a time
(search.max_concurrent: 1) so that ASHA's decisions do not depend on timing, nor on B sharing
the machine with A.
The bad-input tests need no Ray.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from fer_core.digest_cache import DigestCache
from fer_core.errors import FerError
from orchestrator.cli import main as cli_main
from orchestrator.plan.profiles import RayProfile, SlurmProfile, load_profile
from orchestrator.query import run_query
from orchestrator.run.lineage import stale_units
from orchestrator.run.rundir import TRIAL, RunDir
from orchestrator.tune.nested import choose
from orchestrator.tune.slurm import render_tune_sbatch, trial_profile
from orchestrator.tune.space import STAGE1_LOSSES, STAGE2_LOSSES, load_tune
from tests.helpers import REPO, Background, cli, private_copy, ray_running

pytestmark = pytest.mark.usefixtures("ray_left_as_found")

TEST_FOLDS = [1]
SEARCH_FOLDS = 2
SAMPLES = 4
STAGE1_EPOCHS, STAGE2_EPOCHS = 6, 2
GRID = {
    "name": "tunetest",
    "seed": 0,
    "datasets": {"ckplus": {"kind": "ckplus", "crop_size": 32, "detector": "center"}},
    "backbones": {"tiny": {"weights": "none", "input_size": 32}},
    "train": {"epochs": STAGE1_EPOCHS, "lr_step_epoch": 5, "batch_size": 32},
    "stages": {2: {"epochs": STAGE2_EPOCHS, "lr_step_epoch": 2}},
    "search": {
        "dataset": "ckplus",
        "backbone": "tiny",
        "test_folds": TEST_FOLDS,
        "inner_folds": 8,
        "folds": SEARCH_FOLDS,
        # 0.02 scales stage 2's gradient by 1/50: its trials barely move, so ASHA stops them
        "alpha": [0.02, 1.0, "inverse_frequency"],
        "gamma": {"min": 0.0, "max": 4.0},
        "samples": SAMPLES,
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "max_concurrent": 1,
        "seed": 0,
    },
}


def _write_grid(path: Path, **search_changes) -> Path:
    body = json.loads(json.dumps(GRID))
    body["stages"] = {2: body["stages"]["2"]}
    body["search"].update(search_changes)
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    return _write_grid(tmp_path_factory.mktemp("tunegrid") / "grid.yaml")


def _args(grid: Path, cluster_file: Path, run_dir: Path, root: Path | None = None, **kw):
    argv = ["tune", "--grid", str(grid), "--cluster-file", str(cluster_file)]
    argv += ["--run-dir", str(run_dir)]
    kw.setdefault("cluster", "local")  # stage units as subprocesses, trials on a local Ray
    if root is not None:
        argv += ["--data", f"ckplus={root}"]
    for key, value in kw.items():
        argv += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return argv


# --- bad input: validated before anything runs (no Ray) -------------------------------------


@pytest.mark.parametrize(
    "change, culprit",
    [
        ({"alpha": []}, "search.alpha"),
        ({"gamma": []}, "search.gamma"),
        ({"alpha": [0.25, 1.5]}, "1.5"),
        ({"alpha": [0]}, "no class weighting"),
        ({"alpha": ["uniform"]}, "'uniform'"),
        ({"gamma": {"min": -1, "max": 2}}, "-1"),
        ({"gamma": {"min": 0, "max": 50}}, "50"),
        ({"gamma": {"min": 3, "max": 1}}, "range is empty"),
        ({"gamma": {"min": 0}}, "min and max"),
        ({"samples": 0}, "search.samples"),
        ({"test_folds": [0, 1]}, "search.test_folds"),
        ({"test_folds": [1, 11]}, "search.test_folds"),
        ({"folds": [1, 9]}, "search.folds"),
        ({"search_alg": "bayes"}, "search.search_alg"),
        ({"scheduler": {"type": "pbt"}}, "search.scheduler.type"),
        ({"scheduler": {"reduction_factor": 1}}, "reduction_factor"),
        ({"scheduler": {"grace_period": 99}}, "grace_period"),
        ({"scheduler": {"max_t": 3}}, "max_t"),
        ({"dataset": "oulu"}, "search.dataset"),
        ({"stage1": "focal"}, "search.stage1"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_search_blocks_are_refused_naming_the_key(tmp_path, change, culprit):
    path = _write_grid(tmp_path / "grid.yaml", **change)
    with pytest.raises(FerError, match=None) as error:
        load_tune(str(path))
    message = str(error.value)
    assert culprit in message and str(path) in message and "\n" not in message


def test_stage_losses_offered_follow_the_loss_registry():
    # stage 2 is searched over α and γ: the losses that take them; stage 1 takes neither
    assert STAGE1_LOSSES == ("ce",) and STAGE2_LOSSES == ("focal", "joint")


def test_grid_parts_are_validated_by_the_grid_schema(tmp_path):
    body = yaml.safe_load(_write_grid(tmp_path / "g.yaml").read_text())
    body["train"]["epochs"] = 0
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(body))
    with pytest.raises(FerError, match=r"g\.yaml.*epochs"):
        load_tune(str(tmp_path / "g.yaml"))
    body["train"]["epochs"] = 2
    body["selection"] = "heldout"
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(body))
    with pytest.raises(FerError, match="selection"):
        load_tune(str(tmp_path / "g.yaml"))


def test_a_fixed_split_dataset_is_refused_for_the_nested_search(tmp_path):
    body = yaml.safe_load(_write_grid(tmp_path / "g.yaml").read_text())
    body["datasets"]["ckplus"] = {"kind": "manifest", "root": str(tmp_path), "protocol": "fixed"}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(body))
    with pytest.raises(FerError, match="ckplus has protocol: fixed; the nested search"):
        load_tune(str(tmp_path / "g.yaml"))


def test_the_shipped_tune_grid_is_valid():
    spec = load_tune("tune")
    assert spec.strategy == "ce>focal" and spec.samples >= 4
    assert None in spec.alpha and "inverse_frequency" in spec.alpha
    assert spec.inner_folds + len(spec.test_folds) == spec.grid.datasets["ckplus"].n_folds
    assert spec.budget == spec.stage2_config().epochs * len(spec.search_folds)


def test_the_effective_tune_grid_loads_back_as_the_same_search(tmp_path):
    """What `tune` keeps as RUN_DIR/grid.yaml (as `launch` does): the grid after `--set`,
    `--samples` and `--data`, itself a tune grid that loads to the same search."""
    root = tmp_path / "ckplus-images"
    spec = load_tune(
        str(_write_grid(tmp_path / "g.yaml")),
        {"ckplus": str(root)},
        samples=3,
        settings=("train.lr=0.02",),
    )
    rundir = RunDir(tmp_path / "run")
    rundir.write_grid(spec.effective)
    again = load_tune(str(rundir.grid_copy_path))
    assert again.effective == spec.effective and again.samples == 3
    assert again.grid.train["lr"] == 0.02 and again.grid.datasets["ckplus"].root == str(root)
    same = ("dataset", "backbone", "test_folds", "inner_folds", "search_folds", "alpha", "seed")
    assert [getattr(again, k) for k in same] == [getattr(spec, k) for k in same]
    assert "experiments" not in spec.effective  # a tune grid may not name one


def test_samples_zero_is_one_line_error(grid, cluster_file, tmp_path):
    result = cli(*_args(grid, cluster_file, tmp_path / "run", samples=0), cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --samples: 0 must be a positive integer (trials to run)"
    assert not (tmp_path / "run").exists()


def test_grid_search_runs_every_point_once_and_takes_no_samples(tmp_path):
    from ray.tune.search.variant_generator import generate_variants

    from orchestrator.tune.search import param_space

    alphas = [None, 0.5, "inverse_frequency"]
    path = _write_grid(tmp_path / "g.yaml", search_alg="grid", alpha=alphas, gamma=[0, 2])
    body = yaml.safe_load(path.read_text())
    del body["search"]["samples"]
    path.write_text(yaml.safe_dump(body))
    spec = load_tune(str(path))
    variants = [v for _, v in generate_variants(param_space(spec))]
    assert len(variants) == spec.n_trials() == 6
    assert {(v["alpha"], v["gamma"]) for v in variants} == {
        (a, g) for a in alphas for g in (0.0, 2.0)
    }
    with pytest.raises(FerError, match="--samples: 5: grid search"):
        load_tune(str(path), samples=5)


def test_a_profile_of_data_parallel_units_is_refused_for_a_search(grid, tmp_path, capsys):
    """A search runs each trial as one process: a profile whose units are several ranks
    (D-24) would train its final units one way and its trials another; refused, exit 2."""
    argv = ["tune", "--grid", str(grid), "--run-dir", str(tmp_path / "run")]
    assert cli_main([*argv, "--cluster", "local-2proc"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: --cluster local-2proc: procs_per_unit: 2: a search runs")
    assert not (tmp_path / "run").exists()


def test_a_dead_ray_address_fails_fast_naming_it(grid, cluster_file, tmp_path, capsys):
    assert not ray_running()  # else tune would reuse that Ray and never try the address
    started = time.monotonic()
    code = cli_main(_args(grid, cluster_file, tmp_path / "run", cluster="dead"))
    assert code == 2
    assert "127.0.0.1:1" in capsys.readouterr().err
    assert time.monotonic() - started < 5 + 5


def test_slurm_renders_a_ray_cluster_script_that_runs_tune(grid, cluster_file, tmp_path):
    spec = load_tune(str(grid))
    profile = load_profile("slurm", cluster_file)
    text = render_tune_sbatch(
        spec,
        tmp_path / "run",
        profile,
        RayProfile(gpus_per_trial=0.5),
        nodes=3,
        samples=6,
        data=["ckplus=/data/CK+"],
    )
    assert "#SBATCH --nodes=3" in text and "#SBATCH --gpus-per-node=4" in text
    assert "#SBATCH --partition=gpu" in text and "module load cuda/12.4" in text
    assert text.index("--head") < text.index('--address="$head_ip:$port"')
    assert "gpus_per_trial: 0.5" in text and "orchestrator launch" not in text
    command = text.rstrip().splitlines()[-2:]
    assert f"-m orchestrator tune --grid {grid}" in command[0]
    assert "--samples 6 --data ckplus=/data/CK+" in command[0] and "--cluster ray" in command[1]


def test_slurm_trials_take_the_ray_profile_of_the_same_file(cluster_file, tmp_path):
    gpus = SlurmProfile(gpus_per_job=4)
    assert trial_profile(gpus, cluster_file) == load_profile("ray", cluster_file)
    only_slurm = tmp_path / "slurm.yaml"
    only_slurm.write_text("s: {backend: slurm}\n")  # no ray profile: one GPU per trial
    assert trial_profile(gpus, only_slurm) == RayProfile(gpus_per_trial=1)
    assert trial_profile(SlurmProfile(), only_slurm) == RayProfile()
    only_slurm.write_text("ray: {backend: local}\n")
    with pytest.raises(FerError, match="profile 'ray' has backend local"):
        trial_profile(gpus, only_slurm)


def test_slurm_submits_the_script_with_sbatch(grid, cluster_file, tmp_path, monkeypatch, capsys):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\necho 4242\n')
    (fake / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    assert cli_main(_args(grid, cluster_file, tmp_path / "run", cluster="slurm", nodes=2)) == 0
    assert "submitted SLURM job 4242" in capsys.readouterr().out
    script = tmp_path / "run" / "tune" / "ray-slurm.sbatch"
    assert (fake / "args").read_text().split() == ["--parsable", str(script)]
    assert "#SBATCH --nodes=2" in script.read_text()
    assert json.loads((tmp_path / "run" / "tune" / "slurm.json").read_text())["job_id"] == "4242"


def test_choose_looks_at_complete_trials_only_and_ties_go_to_the_earlier():
    rows = [
        {"trial_id": "a_00000", "status": "complete", "inner_val_mean": 0.5},
        {"trial_id": "a_00001", "status": "stopped", "inner_val_mean": math.nan},
        {"trial_id": "a_00002", "status": "complete", "inner_val_mean": 0.7},
        {"trial_id": "a_00003", "status": "complete", "inner_val_mean": 0.7},
        {"trial_id": "a_00004", "status": "error", "inner_val_mean": math.nan, "error": "x"},
    ]
    assert choose(rows)["trial_id"] == "a_00002"
    with pytest.raises(FerError, match="no trial completed"):
        choose([rows[1], rows[4]])


# --- two real searches -------------------------------------------------------------------------


def _permute_test_fold_labels(root: Path, test_folds: list[int]) -> int:
    """Rotate the emotion codes among the test folds' sequences; returns how many changed."""
    from fer_core.data.index import build_index

    index = build_index("ckplus", root)
    subjects = sorted({r.subject for r in index.records if r.fold in test_folds})
    files = sorted(p for s in subjects for p in (root / "Emotion" / s).rglob("*_emotion.txt"))
    codes = [p.read_text() for p in files]
    rotated = codes[1:] + codes[:1]
    for path, code in zip(files, rotated, strict=True):
        path.write_text(code)
    return sum(a.strip() != b.strip() for a, b in zip(codes, rotated, strict=True))


@pytest.fixture(scope="module")
def roots(twin_root, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tunetwins")
    plain, permuted = folder / "plain", folder / "permuted"
    shutil.copytree(twin_root, plain)
    shutil.copytree(twin_root, permuted)
    assert _permute_test_fold_labels(permuted, TEST_FOLDS) > 10
    return plain, permuted


def _interrupt_after_first_trial(search: Background, rows: Path, finished: set[str]) -> None:
    """SIGINT to the `tune` driver once a trial's row has landed (the driver only, as Tune's
    own handler stops its trials); `finished` gets the trials done by then."""
    while search.process.poll() is None:
        finished.update(p.stem for p in rows.glob("*.parquet"))
        if finished:
            search.process.send_signal(signal.SIGINT)
            return
        time.sleep(0.1)


@pytest.fixture(scope="module")
def search_b_started(
    grid, cluster_file, roots, tmp_path_factory
) -> Iterator[tuple[Background, Path, threading.Thread, set[str]]]:
    """B's first run, in the background: (the CLI process, its run dir, the thread that
    interrupts it, the trials finished before the interrupt)."""
    folder = tmp_path_factory.mktemp("tuneB")
    run_dir = folder / "run"
    search = Background(*_args(grid, cluster_file, run_dir, roots[1]), cwd=folder, name="tune")
    finished: set[str] = set()
    rows = run_dir / "store" / "trials"
    watcher = threading.Thread(target=_interrupt_after_first_trial, args=(search, rows, finished))
    watcher.start()
    try:
        yield search, run_dir, watcher, finished
    finally:
        search.kill_group()  # a no-op once it has ended; else it and its Ray go
        watcher.join()


@pytest.fixture(scope="module")
def search_a(search_b_started, local_ray, grid, cluster_file, roots, tmp_path_factory) -> RunDir:
    """A, while B's first run goes on (hence `search_b_started`)."""
    run_dir = tmp_path_factory.mktemp("tuneA") / "run"
    assert cli_main(_args(grid, cluster_file, run_dir, roots[0])) == 0
    return RunDir(run_dir)


@pytest.fixture(scope="module")
def search_b(search_b_started, local_ray, grid, cluster_file, roots) -> tuple[RunDir, set[str]]:
    """B: interrupted once its first trial had finished, then resumed here."""
    search, run_dir, watcher, finished = search_b_started
    code = search.wait(600)
    watcher.join()
    out = search.output()
    assert code == 2, out
    assert "interrupted" in out and "run `tune` again" in out, out
    assert finished, out
    assert not (run_dir / "tune" / "choice.json").exists()
    assert cli_main(_args(grid, cluster_file, run_dir, roots[1])) == 0
    return RunDir(run_dir), finished


def _trials(rundir: RunDir) -> list[dict]:
    return rundir.store.read("trials").to_pylist()


def _choice(rundir: RunDir) -> dict:
    return json.loads((rundir.path / "tune" / "choice.json").read_text())


@pytest.mark.ray
@pytest.mark.slow
def test_trials_run_asha_stops_some_and_each_has_one_row(search_a):
    rows = _trials(search_a)
    assert len(rows) == SAMPLES and len({r["trial_id"] for r in rows}) == SAMPLES
    by_status = {s: [r for r in rows if r["status"] == s] for s in ("complete", "stopped")}
    assert by_status["complete"] and by_status["stopped"], rows
    for row in by_status["stopped"]:
        assert row["stopped_early"] and row["epochs_done"] < row["max_epochs"]
        assert math.isnan(row["inner_val_mean"])
    for row in by_status["complete"]:
        assert row["epochs_done"] == row["max_epochs"] == STAGE2_EPOCHS * SEARCH_FOLDS
        assert row["inner_val_mean"] == pytest.approx(sum(row["fold_inner_accuracy"]) / 2)
    chosen = [r for r in rows if r["chosen"]]
    assert len(chosen) == 1
    assert chosen[0]["inner_val_mean"] == max(r["inner_val_mean"] for r in by_status["complete"])
    listing = json.loads(
        run_query(
            search_a.path, "SELECT count(*) AS n, sum(chosen::int) AS c FROM trials", fmt="json"
        )
    )
    assert listing == [{"n": SAMPLES, "c": 1}]


@pytest.mark.ray
@pytest.mark.slow
def test_stage_1_trains_once_per_fold_and_every_trial_starts_from_it(search_a):
    runs = search_a.store.read("runs").to_pylist()
    stage1 = [r for r in runs if r["stage"] == 1]
    dev = sorted(r["fold"] for r in stage1 if r["dataset"] == "ckplus-dev")
    outer = sorted(r["fold"] for r in stage1 if r["dataset"] == "ckplus")
    assert dev == list(range(1, SEARCH_FOLDS + 1)) and outer == TEST_FOLDS
    assert all(r["resumed_from_epoch"] == 0 for r in stage1)
    epochs = search_a.store.read("epochs", {r["unit_id"] for r in stage1}).to_pylist()
    assert len(epochs) == len(stage1) * STAGE1_EPOCHS  # nothing trained twice
    parents = {r["fold"]: r["unit_id"] for r in stage1 if r["dataset"] == "ckplus-dev"}
    seen: dict[int, set] = {}
    for split in (search_a.path / "tune" / "trials").glob("*/split-*/split.json"):
        body = json.loads(split.read_text())
        assert body["spec"]["parent_id"] == parents[body["fold"]]
        assert body["spec"]["parent_dir"] == str(search_a.work_dir(parents[body["fold"]]))
        assert search_a.read_spec(body["unit_id"])["kind"] == TRIAL  # run by the worker
        if body.get("parent_weights_sha"):
            seen.setdefault(body["fold"], set()).add(body["parent_weights_sha"])
    assert seen and all(len(shas) == 1 for shas in seen.values())
    # Trial splits name their Ray trial as scheduler and job (backends.ray.trial.trial_env).
    experiment = _choice(search_a)["experiment"]
    trials = {f"{experiment}/{r['trial_id']}" for r in _trials(search_a)}
    splits = [r for r in runs if r["dataset"] == "ckplus-dev" and r["stage"] == 2]
    assert splits and {r["scheduler"] for r in splits} == {"ray"}
    assert {r["job_id"] for r in splits} <= trials
    # The final units: the chosen α/γ on each test fold, from that fold's stage 1.
    choice = _choice(search_a)
    final = {r["unit_id"]: r for r in runs if r["unit_id"] in choice["final_units"].values()}
    assert sorted(r["fold"] for r in final.values()) == TEST_FOLDS
    for row in final.values():
        assert row["parent_weights_sha"] == row["start_weights_sha"]
        assert row["selection"] == "inner" and row["gamma"] == pytest.approx(choice["gamma"])


@pytest.mark.ray
@pytest.mark.slow
def test_the_search_never_sees_the_test_folds(search_a):
    dev_index = next((search_a.path / "data" / "ckplus-dev").glob("*/index.parquet"))
    full_index = next((search_a.path / "data" / "ckplus").glob("*/index.parquet"))
    from fer_core.data.index import DatasetIndex

    test_images = {r.path for r in DatasetIndex.read(full_index).records if r.fold in TEST_FOLDS}
    dev_images = {r.path for r in DatasetIndex.read(dev_index).records}
    assert test_images and dev_images and not test_images & dev_images


@pytest.mark.ray
@pytest.mark.slow
def test_permuted_test_labels_change_nothing_in_the_search(search_a, search_b):
    rundir_b, _ = search_b

    def key(row):
        return (row["alpha"], round(row["gamma"], 9))

    a = {key(r): r for r in _trials(search_a)}
    b = {key(r): r for r in _trials(rundir_b)}
    assert set(a) == set(b)
    for k in a:
        for column in ("fold_inner_accuracy", "status", "epochs_done", "chosen"):
            assert a[k][column] == b[k][column] or (
                column == "fold_inner_accuracy"
                and all(
                    x == y or (math.isnan(x) and math.isnan(y))
                    for x, y in zip(a[k][column], b[k][column], strict=True)
                )
            ), (k, column, a[k][column], b[k][column])
    choice_a, choice_b = _choice(search_a), _choice(rundir_b)
    assert (choice_a["alpha"], choice_a["gamma"]) == (choice_b["alpha"], choice_b["gamma"])

    # ...while the test folds themselves did change: their labels are what is scored.
    def labels(rundir):
        return {r["image_id"]: r["label"] for r in rundir.store.read("predictions").to_pylist()}

    labels_a, labels_b = labels(search_a), labels(rundir_b)
    assert labels_a.keys() == labels_b.keys() and labels_a != labels_b


@pytest.mark.ray
@pytest.mark.slow
def test_resume_after_an_interrupt_runs_only_unfinished_trials(search_b):
    rundir, finished_before = search_b
    experiment = _choice(rundir)["experiment"]
    lines = (rundir.path / "tune" / experiment / "invocations.jsonl").read_text().splitlines()
    starts: dict[str, int] = {}
    for line in lines:
        trial = json.loads(line)["trial_id"]
        starts[trial] = starts.get(trial, 0) + 1
    assert finished_before and set(starts) == {r["trial_id"] for r in _trials(rundir)}
    for trial in finished_before:
        assert starts[trial] == 1, (trial, starts)
    assert len(_trials(rundir)) == SAMPLES


@pytest.mark.ray
@pytest.mark.slow
def test_tune_again_on_a_finished_run_dir_trains_nothing(search_a, grid, cluster_file, roots):
    stamps = {p: p.stat().st_mtime_ns for p in search_a.store.files("runs")}
    experiment = _choice(search_a)["experiment"]
    starts = (search_a.path / "tune" / experiment / "invocations.jsonl").read_text()
    assert cli_main(_args(grid, cluster_file, search_a.path, roots[0])) == 0
    assert {p: p.stat().st_mtime_ns for p in search_a.store.files("runs")} == stamps
    assert (search_a.path / "tune" / experiment / "invocations.jsonl").read_text() == starts


@pytest.mark.ray
@pytest.mark.slow
def test_tune_again_retrains_a_stage_1_whose_weights_changed_and_keeps_lineage(
    search_a, grid, cluster_file, roots, tmp_path, capsys
):
    """As `launch` does: a done unit whose lineage no longer holds is cleared and trained
    afresh (left in the store, its worker would call it done). Its final stage 2 is checked
    when its turn comes, against the retrained parent's weights: it trains again unless it
    started from exactly those bytes (a deterministic retrain gives them back)."""
    rundir = private_copy(search_a, tmp_path)
    final = next(u for u in rundir.read_dag() if u.kind == "train" and u.stage == 2)
    parent = final.spec["parent_id"]
    best = rundir.work_dir(parent) / "best.pt"
    best.write_bytes(best.read_bytes()[:100])  # truncated
    before = {r["unit_id"]: r["finished_at"] for r in rundir.store.read("runs").to_pylist()}
    capsys.readouterr()
    assert cli_main(_args(grid, cluster_file, rundir.path, roots[0])) == 0
    out = capsys.readouterr().out
    assert f"({parent}): its best.pt is not the file its training wrote" in out, out
    after = {r["unit_id"]: r["finished_at"] for r in rundir.store.read("runs").to_pylist()}
    retrained = {u for u in before if after[u] != before[u]}
    children = {u.id for u in rundir.read_dag() if u.spec.get("parent_id") == parent}
    assert parent in retrained and retrained <= {parent} | children, out
    digests = DigestCache(None)
    assert stale_units(rundir, rundir.read_dag(), digests) == {}  # every lineage holds now


@pytest.mark.ray
@pytest.mark.slow
def test_the_report_gains_the_search_section(search_a):
    from orchestrator.report.document import write_report

    report = write_report(search_a.path)
    text = report.path.read_text()
    choice = _choice(search_a)
    assert "## α/γ search" in text and f"**Chosen: α = {choice['alpha']}" in text
    assert "nested estimate" in text and "test fold 1 of" in text
    assert "test fold run: 1." in text  # one test fold, not "1–1"
    assert "[`grid.yaml`](../grid.yaml) in the run dir" in text  # tune keeps its grid
    # the search's development split is no test accuracy
    assert "manifest: the development subjects of `ckplus` for the α/γ search" in text
    assert "ckplus-dev · tiny" not in text and "| ckplus-dev | tiny |" not in text
    figure = report.path.parent / "tune-landscape.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_search_no_section(tmp_path):
    from orchestrator.report.tune import tune_section

    assert tune_section(tmp_path, tmp_path) == ""
