"""Checked lineage at any chain depth: a `best.pt` that is not the one its training wrote
makes its unit not done, and every unit below it in the chain retrains after it; a child
whose parent was retrained since retrains too. Also: replicates (`--seeds`) and the copy of
the effective grid a launch keeps."""

from __future__ import annotations

import io
import json
import shutil

import pytest
import torch
import yaml

from fer_core.checkpoints import BEST, DIGESTS, recorded_digests, save
from fer_core.io import sha256_file
from orchestrator.cli import main
from orchestrator.run.launch import launch
from orchestrator.run.rundir import RunDir
from orchestrator.run.states import State
from orchestrator.run.status import unit_states
from tests.helpers import private_copy, small_grid, tiny_ckplus


def _grid(root, strategies: str) -> str:
    return small_grid(
        "lineage", root=root, strategies=strategies, dataset="ck", epochs=1, n_folds=2, batch_size=8
    )


def _launch(grid, run) -> str:
    out = io.StringIO()
    launch(str(grid), run_dir=run, jobs=1, out=out)
    return out.getvalue()


def _finished(rundir: RunDir) -> dict[str, float]:
    """unit id -> finished_at of its stored result."""
    return {r["unit_id"]: r["finished_at"] for r in rundir.store.read("runs").to_pylist()}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A three-stage chain ce > focal > ce, launched to completion; stage -> unit."""
    tmp = tmp_path_factory.mktemp("lineage")
    grid = tmp / "grid.yaml"
    root = tiny_ckplus(tmp / "ck")
    grid.write_text(_grid(root, '["ce>focal>ce"]'))
    _launch(grid, tmp / "run")
    rundir = RunDir(tmp / "run")
    stages = {u.stage: u for u in rundir.read_dag() if u.kind == "train"}
    assert sorted(stages) == [1, 2, 3]
    return grid, rundir, stages


def _assert_lineage_recorded(rundir: RunDir, stages) -> None:
    """Each child's row names the digest of its parent's current, verified best.pt."""
    runs = {r["unit_id"]: r for r in rundir.store.read("runs").to_pylist()}
    for stage in (2, 3):
        parent = rundir.work_dir(stages[stage - 1].id)
        row = runs[stages[stage].id]
        assert row["parent_best_sha"] == recorded_digests(parent)[BEST]
        assert row["parent_best_sha"] == sha256_file(parent / BEST)
        assert row["parent_weights_sha"] == row["start_weights_sha"]


def test_a_swapped_best_pt_retrains_its_unit_and_the_chain_below(chain, tmp_path):
    grid, shared, stages = chain
    rundir = private_copy(shared, tmp_path)  # the module's chain stays as launched
    before = _finished(rundir)
    first = rundir.work_dir(stages[1].id) / BEST
    shutil.copy(rundir.work_dir(stages[3].id) / BEST, first)  # loadable, but not its own
    states = unit_states(rundir, rundir.read_dag(), None)
    assert [states[stages[k].id] for k in (1, 2, 3)] == [State.TODO] * 3
    output = _launch(grid, rundir.path)
    assert f"{stages[1].name} ({stages[1].id}): its {BEST} is not the file" in output
    assert f"{stages[3].name} ({stages[3].id}): its parent {stages[2].id} is retrained" in output
    after = _finished(rundir)
    assert all(after[stages[k].id] > before[stages[k].id] for k in (1, 2, 3))
    _assert_lineage_recorded(rundir, stages)


def test_an_unreadable_best_pt_in_the_middle_retrains_from_there_down(chain, tmp_path):
    grid, shared, stages = chain
    rundir = private_copy(shared, tmp_path)  # the module's chain stays as launched
    before = _finished(rundir)
    middle = rundir.work_dir(stages[2].id) / BEST
    middle.write_bytes(middle.read_bytes()[:100])  # truncated
    states = unit_states(rundir, rundir.read_dag(), None)
    assert [states[stages[k].id] for k in (1, 2, 3)] == [State.DONE, State.TODO, State.TODO]
    _launch(grid, rundir.path)
    after = _finished(rundir)
    assert after[stages[1].id] == before[stages[1].id]
    assert after[stages[2].id] > before[stages[2].id]
    assert after[stages[3].id] > before[stages[3].id]
    _assert_lineage_recorded(rundir, stages)


def test_a_dry_run_counts_stale_units_as_not_done_and_writes_nothing(chain, tmp_path):
    grid, shared, stages = chain
    rundir = private_copy(shared, tmp_path)  # the module's chain stays as launched
    middle = rundir.work_dir(stages[2].id) / BEST
    middle.write_bytes(middle.read_bytes()[:100])  # truncated
    files = sorted((p, p.stat().st_mtime_ns) for p in rundir.path.rglob("*") if p.is_file())
    out = io.StringIO()
    launch(str(grid), run_dir=rundir.path, dry_run=True, out=out)
    text = out.getvalue()
    assert f"already done in {rundir.path}: 2" in text  # the preparation and stage 1
    assert f"would retrain {stages[2].name} ({stages[2].id}): its {BEST} is not the file" in text
    assert f"would retrain {stages[3].name} ({stages[3].id}): its parent" in text
    assert stages[1].id not in text
    assert sorted((p, p.stat().st_mtime_ns) for p in rundir.path.rglob("*") if p.is_file()) == files


def test_a_child_whose_parent_was_retrained_since_retrains(chain, tmp_path):
    """The parent's new best.pt is its own (recorded) but not the one the child started from."""
    grid, shared, stages = chain
    rundir = private_copy(shared, tmp_path)  # the module's chain stays as launched
    before = _finished(rundir)
    parent = rundir.work_dir(stages[2].id)
    state = torch.load(parent / BEST, weights_only=True)
    state["model"] = {
        k: v + 0.01 if v.is_floating_point() else v for k, v in state["model"].items()
    }
    save(state, parent, BEST)
    output = _launch(grid, rundir.path)
    assert f"its parent {stages[2].id} was retrained since" in output
    after = _finished(rundir)
    assert after[stages[2].id] == before[stages[2].id]
    assert after[stages[3].id] > before[stages[3].id]
    _assert_lineage_recorded(rundir, stages)


def test_seeds_on_the_command_line_double_the_trainings_and_the_grid_copy_says_so(tmp_path):
    grid = tmp_path / "grid.yaml"
    root = tiny_ckplus(tmp_path / "ck")
    grid.write_text(_grid(root, '[ce, "ce>focal"]'))
    run = tmp_path / "run"
    argv = ["launch", "--grid", str(grid), "--run-dir", str(run), "--jobs", "2"]
    assert main([*argv, "--seeds", "0,1"]) == 0
    rows = RunDir(run).store.read("runs").to_pylist()
    assert len(rows) == 4  # (ce stage 1, ce>focal stage 2) x 2 seeds
    assert sorted(r["seed"] for r in rows) == [0, 0, 1, 1]
    kept = yaml.safe_load((run / "grid.yaml").read_text())
    assert kept["seeds"] == [0, 1] and "seed" not in kept
    assert kept["datasets"]["ck"]["root"] == str(root)


def test_a_best_pt_that_does_not_load_retrains_even_when_its_digest_was_edited_to_match(
    chain, tmp_path
):
    """A damaged parent vouched for by an edited checkpoints.json is not done: it retrains,
    then its child, instead of the child failing on every launch."""
    grid, shared, stages = chain
    rundir = private_copy(shared, tmp_path)  # the module's chain stays as launched
    before = _finished(rundir)
    middle = rundir.work_dir(stages[2].id)
    (middle / BEST).write_bytes((middle / BEST).read_bytes()[:-200])  # truncated
    record = middle / DIGESTS
    digests = json.loads(record.read_text())
    record.write_text(json.dumps({**digests, BEST: sha256_file(middle / BEST)}))
    states = unit_states(rundir, rundir.read_dag(), None)
    assert [states[stages[k].id] for k in (1, 2, 3)] == [State.DONE, State.TODO, State.TODO]
    output = _launch(grid, rundir.path)
    assert f"{stages[2].name} ({stages[2].id}): its {BEST} does not load" in output
    after = _finished(rundir)
    assert after[stages[1].id] == before[stages[1].id]
    assert all(after[stages[k].id] > before[stages[k].id] for k in (2, 3))
    _assert_lineage_recorded(rundir, stages)
