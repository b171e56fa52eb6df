"""The search's typed records: the ids and files they make are the ones run dirs already hold
(so those resume), they round-trip through JSON and Parquet, and a damaged or older record
fails with one line naming its file. No Ray: a trial's row and the choice are built from
files written here, as a finished trial leaves them.

The expected ids, row and choice.json below were computed by the code before these types
(main at 0f10c27) from the same inputs: they must not change, or run dirs stop resuming.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from fer_core.errors import FerError
from fer_core.spec import UnitSpec
from orchestrator.run.rundir import RunDir
from orchestrator.tune.nested import TuneRun, summary
from orchestrator.tune.records import (
    SearchSplit,
    SplitRecord,
    TrialChoice,
    TrialRow,
    read_choice,
    read_split_file,
    read_trials,
)
from orchestrator.tune.search import experiment_name, trial_row
from orchestrator.tune.space import load_tune
from orchestrator.tune.trial import SPLIT_FILE, config_id, unit_spec
from tests.orchestrator.tune.test_tune import _write_grid

PARENT = {
    "unit_id": "0123456789ab",
    "grid": "tunetest",
    "dataset": "ckplus-dev",
    "data_dir": "/d",
    "fold": 2,
    "n_folds": 8,
    "backbone": "tiny",
    "weights": "none",
    "input_size": 32,
    "device": "auto",
    "strategy": "ce",
    "stage": 1,
    "config": {},
    "parent_id": None,
    "parent_dir": None,
}
ALPHA_VECTOR = (0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125)
MAIN_ROW = {
    "trial_id": "t_00000",
    "experiment": "search-x",
    "config_id": "4b898c72b567efb6",
    "dataset": "ckplus",
    "backbone": "tiny",
    "loss": "focal",
    "alpha": "0.25",
    "alpha_value": 0.25,
    "gamma": 1.0,
    "search_folds": [1, 2],
    "fold_inner_accuracy": [0.75, 0.625],
    "fold_best_epoch": [2, 1],
    "folds_done": 2,
    "epochs_done": 4,
    "max_epochs": 4,
    "inner_val_mean": 0.6875,
    "inner_val_last": 0.6875,
    "stopped_early": False,
    "status": "complete",
    "error": None,
    "selection": "inner",
    "seconds": 3.0,
    "chosen": False,
    "recorded_at": 1.0,
}
MAIN_CHOICE = {
    "experiment": "search-x",
    "dataset": "ckplus",
    "dev_dataset": "ckplus-dev",
    "backbone": "tiny",
    "strategy": "ce>focal",
    "trial_id": "t_00000",
    "alpha": "0.25",
    "alpha_value": 0.25,
    "gamma": 1.0,
    "inner_val_mean": 0.6875,
    "fold_inner_accuracy": [0.75, 0.625],
    "search_folds": [1, 2],
    "inner_folds": 8,
    "test_folds": [1],
    "search_space": {"alpha": ["0.02", "1", "inverse_frequency"], "gamma": "[0, 4]"},
    "search_alg": "random",
    "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2.0, "max_t": 4},
    "seed": 0,
    "trials": 1,
    "trials_complete": 1,
    "trials_stopped": 0,
    "trials_error": 0,
    "final_units": {},
    "stage1_units": {},
    "paper_protocol_units": None,
    "test": {"per_fold": {}, "mean": math.nan, "std": 0.0, "n_test": 0},
    "paper_protocol_test": None,
    "wall_seconds": 12.5,
    "chosen_at": 1000.0,
}


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return load_tune(str(_write_grid(tmp_path_factory.mktemp("grid") / "grid.yaml")))


def _splits(folds=(2,)) -> list[SearchSplit]:
    parent = UnitSpec.from_dict(PARENT)
    return [SearchSplit(f, f"p{f}", parent, "ce>focal", ALPHA_VECTOR) for f in folds]


@pytest.mark.parametrize(
    "config, cid, unit_id",
    [
        ({"alpha": "inverse_frequency", "gamma": 1.5}, "a167d7cc8e684f59", "a827ca08bf3757c0"),
        ({"alpha": 0.25, "gamma": 2}, "046fc4139a9f5f22", "98985a3e1829b6db"),
        ({"alpha": None, "gamma": 0.0}, "184d79361fe6703b", "2529a85b45514ece"),
    ],
)
def test_config_and_trial_unit_ids_are_those_run_dirs_hold(spec, tmp_path, config, cid, unit_id):
    splits = [SearchSplit(2, "0123456789ab", UnitSpec.from_dict(PARENT), "ce>focal", ALPHA_VECTOR)]
    choice = TrialChoice.from_config(config)  # as Ray hands it over (γ 2 is an int there)
    stage2 = spec.stage2_config()
    assert config_id(choice, splits, stage2) == cid
    made = unit_spec(RunDir(tmp_path), splits[0], stage2, choice)
    assert made.unit_id == unit_id and made.stage == 2 and made.parent_id == "0123456789ab"
    assert experiment_name(spec, splits) == "search-06eb27fe91990683"


def test_a_trial_choice_resolves_alpha_per_split():
    split = _splits()[0]
    vector = TrialChoice.from_config({"alpha": "inverse_frequency", "gamma": 3})
    assert vector.gamma == 3.0 and isinstance(vector.gamma, float)
    assert vector.alpha_for(split) == list(ALPHA_VECTOR) and vector.alpha_value is None
    scalar = TrialChoice(0.25, 1.0)
    assert scalar.alpha_for(split) == 0.25 and scalar.alpha_value == 0.25
    assert (scalar.label, vector.label, TrialChoice(None, 0.0).label) == (
        "0.25",
        "inverse_frequency",
        "null",
    )


def test_a_split_record_sums_up_its_epochs():
    record = SplitRecord(1, (0.5, 0.75, 0.75), epochs=4)
    assert (record.best, record.best_epoch, record.complete) == (0.75, 2, False)
    empty = SplitRecord(1, (), epochs=4)
    assert math.isnan(empty.best) and empty.best_epoch == 0 and not empty.complete


def _finished_trial(spec, run_dir: Path) -> TrialRow:
    """The files a finished trial (α 0.25, γ 1) on splits 1 and 2 leaves; its row."""
    rundir, choice, splits = RunDir(run_dir), TrialChoice(0.25, 1.0), _splits((1, 2))
    cid = config_id(choice, splits, spec.stage2_config())
    for fold, accuracies in ((1, [0.5, 0.75]), (2, [0.625, 0.5])):
        folder = rundir.trial_split_dir(cid, fold)
        folder.mkdir(parents=True)
        (folder / SPLIT_FILE).write_text(json.dumps({"accuracies": accuracies}))
    history = rundir.history_path("search-x", "t_00000")
    history.parent.mkdir(parents=True)
    history.write_text('{"t": 4, "metric": 0.6875}\n')
    stage2 = spec.stage2_config()
    return trial_row(spec, "search-x", "t_00000", choice, splits, stage2, run_dir, "", 3.0)


def test_trial_rows_and_choice_json_are_written_as_before(spec, tmp_path):
    row = _finished_trial(spec, tmp_path)
    row["recorded_at"] = 1.0
    assert json.dumps(row) == json.dumps(MAIN_ROW)  # same columns, order and values

    rundir = RunDir(tmp_path)
    run = TuneRun(spec, rundir, None, None)  # no backend, no Ray: no unit is run
    first = run._choice("search-x", row, [row], [], [], [], time.monotonic())
    first["wall_seconds"], first["chosen_at"] = 12.5, 1000.0
    rundir.choice_path.write_text(json.dumps(first, indent=1))
    again = run._choice("search-x", row, [row], [], [], [], time.monotonic())  # keeps timing
    text = json.dumps(again, indent=1)
    assert text == json.dumps(MAIN_CHOICE, indent=1)  # the bytes of choice.json

    rundir.choice_path.write_text(text)
    read = read_choice(rundir.choice_path)
    assert read is not None and json.dumps(read, indent=1) == text
    assert "chosen α=0.25 γ=1 on inner validation (68.75% mean over 2" in summary(read)
    assert "2 inner splits; 1 trial: 1 complete" in summary(read)  # not "1 trials"


def test_trial_rows_round_trip_through_the_store(spec, tmp_path):
    row = _finished_trial(spec, tmp_path)
    store = RunDir(tmp_path).store
    assert read_trials(store) == []
    store.write("trials", row["trial_id"], [row])
    assert read_trials(store) == [row]


def test_trial_rows_of_an_older_layout_fail_naming_the_table_and_column(spec, tmp_path):
    row = _finished_trial(spec, tmp_path)
    store = RunDir(tmp_path).store
    store.write("trials", "t_00000", [{k: v for k, v in row.items() if k != "fold_best_epoch"}])
    with pytest.raises(FerError) as error:
        read_trials(store)
    message = str(error.value)
    assert str(store.root / "trials") in message and "'fold_best_epoch'" in message
    assert "\n" not in message


def test_split_json_reads_back_byte_for_byte_and_old_files_read(tmp_path):
    path = tmp_path / SPLIT_FILE
    assert read_split_file(path) is None  # not started
    body = {
        "spec": PARENT,
        "unit_id": "u1",
        "config_id": "c1",
        "fold": 2,
        "accuracies": [0.5, 0.75],
        "parent_weights_sha": None,
        "start_weights_sha": "ab",
        "train_seconds": 1.5,
    }
    text = json.dumps(body, indent=1)
    path.write_text(text)
    read = read_split_file(path)
    assert read is not None and json.dumps(read, indent=1) == text
    path.write_text(json.dumps({"fold": 2}))  # before any epoch was recorded
    read = read_split_file(path)
    assert read is not None and read["accuracies"] == []


@pytest.mark.parametrize(
    "text, culprit",
    [
        ('{"accuracies": [0.5, ', "invalid JSON"),
        ("[0.5]", "JSON object"),
        ('{"accuracies": "0.5"}', "accuracies"),
        ('{"accuracies": [0.5, true]}', "accuracies"),
    ],
)
def test_a_damaged_split_json_fails_naming_the_file(tmp_path, text, culprit):
    path = tmp_path / SPLIT_FILE
    path.write_text(text)
    with pytest.raises(FerError) as error:
        read_split_file(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and culprit in message and "\n" not in message


@pytest.mark.parametrize(
    "text, culprit",
    [
        ('{"experiment": ', "invalid JSON"),
        ('"search-x"', "JSON object"),
        (json.dumps({k: v for k, v in MAIN_CHOICE.items() if k != "wall_seconds"}), "wall_seconds"),
    ],
)
def test_a_damaged_or_old_choice_json_fails_naming_the_file(tmp_path, text, culprit):
    from orchestrator.report.tune import tune_section

    rundir = RunDir(tmp_path)
    rundir.choice_path.parent.mkdir(parents=True)
    rundir.choice_path.write_text(text)
    assert read_choice(tmp_path / "missing.json") is None
    with pytest.raises(FerError) as error:
        tune_section(tmp_path, tmp_path)  # the report reads it through read_choice
    message = str(error.value)
    assert message.startswith(f"{rundir.choice_path}: ") and culprit in message
    assert "\n" not in message
