"""A tune trial's splits run through the launch units' worker and leave the same records.

No Ray: `train_splits` is a trial without Tune around it (`run_trial` adds Tune's report and
its lock); the stage-1 parents come from a real launch of the small grid.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from fer_core.checkpoints import BEST
from fer_core.config import StageConfig
from fer_core.errors import FerError
from fer_core.spec import UnitSpec
from orchestrator.plan.dag import content_id
from orchestrator.run.launch import launch
from orchestrator.run.rundir import TRIAL, RunDir
from orchestrator.tune.records import SearchSplit, TrialChoice
from orchestrator.tune.trial import SPLIT_FILE, config_id, train_splits, unit_spec
from tests.helpers import SMALL_GRID


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> RunDir:
    """The small grid (prepare, ce, ce>focal on fold 1), done. Read only."""
    tmp = tmp_path_factory.mktemp("trial")
    grid = tmp / "grid.yaml"
    grid.write_text(SMALL_GRID)
    return launch(str(grid), run_dir=tmp / "run", jobs=1, live="off")


def _trial(rundir: RunDir, gamma: float):
    """A one-split trial of stage 2 from the launch's stage-1 unit, as `tune` builds it."""
    units = {u.strategy: u for u in rundir.read_dag() if u.kind == "train"}
    stage1, stage2 = units["ce"], units["ce>focal"]
    split = SearchSplit(stage1.fold, stage1.id, UnitSpec.from_dict(stage1.spec), "ce>focal", ())
    config = TrialChoice(alpha=0.25, gamma=gamma)
    values = {k: v for k, v in stage2.spec["config"].items() if k not in ("alpha", "gamma")}
    return config, [split], StageConfig.from_dict(values), stage2


def _records(unit_dir: Path) -> set[str]:
    """A unit folder's files, its log (named after the backend) aside."""
    return {str(p.relative_to(unit_dir)) for p in unit_dir.rglob("*") if p.suffix != ".log"}


def test_a_trial_split_leaves_the_records_of_a_launched_unit(launched, tmp_path):
    rundir = RunDir(shutil.copytree(launched.path, tmp_path / "run", symlinks=True))
    config, splits, stage2, launched_unit = _trial(rundir, gamma=1.0)
    cid = config_id(config, splits, stage2)
    reports: list[tuple[int, float]] = []
    bests = train_splits(
        config, splits, stage2, rundir, cid, lambda done, running, **_: reports.append(done)
    )

    spec = unit_spec(rundir, splits[0], stage2, config)
    assert spec.parent_dir == str(rundir.work_dir(splits[0].parent_id))
    on_disk = rundir.read_spec(spec.unit_id)
    assert on_disk["kind"] == TRIAL
    # The unit's id is the hash of its parent and stage config, as written in its spec.json.
    written = on_disk["spec"]
    recipe = {"kind": "tune-trial", "parent": written["parent_id"], "config": written["config"]}
    assert content_id(recipe) == spec.unit_id == written["unit_id"]
    assert _records(rundir.unit_dir(spec.unit_id)) == _records(rundir.unit_dir(launched_unit.id))
    assert rundir.failure(spec.unit_id) is None
    assert (rundir.unit_dir(spec.unit_id) / "ray.log").is_file()
    assert rundir.is_done(spec.unit_id)
    run = rundir.store.read("runs", {spec.unit_id}).to_pylist()[0]
    assert math.isnan(run["test_accuracy"]) and run["n_test"] == 0  # the fold is not scored
    assert run["unit_label"].endswith("/split-1") and run["gamma"] == 1.0
    assert not rundir.store.path("predictions", spec.unit_id).exists()
    epochs = rundir.store.read("epochs", {spec.unit_id}).to_pylist()
    assert reports == [1, 2] and len(epochs) == stage2.epochs == 2
    assert bests == [run["selection_accuracy"]]
    live = json.loads(rundir.live_path(spec.unit_id).read_text())
    assert live["epoch"] == live["epochs"] == 2
    events = rundir.events_dir(TRIAL, rundir.read_spec(spec.unit_id)["name"], {})
    assert list(events.glob("events.out.tfevents.*"))
    body = json.loads((rundir.trial_split_dir(cid, 1) / SPLIT_FILE).read_text())
    assert body["unit_id"] == spec.unit_id and len(body["accuracies"]) == 2

    # A restarted trial finds its splits done: nothing is trained or reported again.
    again: list[int] = []
    assert train_splits(config, splits, stage2, rundir, cid, lambda d, r, **_: again.append(d))
    assert again == [] and rundir.store.read("epochs", {spec.unit_id}).num_rows == 2


def test_a_trial_split_that_fails_leaves_failed_json_with_its_reason(launched, tmp_path):
    rundir = RunDir(shutil.copytree(launched.path, tmp_path / "run", symlinks=True))
    config, splits, stage2, _ = _trial(rundir, gamma=2.0)
    best = rundir.work_dir(splits[0].parent_id) / BEST
    best.write_bytes(best.read_bytes()[:-64] + bytes(64))  # a damaged parent checkpoint
    reports: list[int] = []
    with pytest.raises(FerError, match="parent unit"):
        train_splits(
            config,
            splits,
            stage2,
            rundir,
            config_id(config, splits, stage2),
            lambda done, running, **_: reports.append(done),
        )
    unit_id = unit_spec(rundir, splits[0], stage2, config).unit_id
    reason = rundir.failure(unit_id)
    assert reason is not None and reason.startswith(f"parent unit {splits[0].parent_id}: ")
    assert f"its {BEST} must be the file its training recorded" in reason
    assert not rundir.is_done(unit_id) and reports == []
