"""`predict` and `export` pick one configuration: in a run dir with a sweep, or with both
selection protocols, a fold has one unit per configuration, and a choice that leaves several
is refused with the options that pick each (never averaged). The run dirs are real (claimed,
a real sweep's dag.json, the store's `runs` rows that mark units done); nothing is trained,
since the choice is made before any model is loaded."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import pytest

from orchestrator.cli import main
from orchestrator.cli.predict import select_units
from orchestrator.plan.overrides import expand_plan, load_grids, parse_settings
from orchestrator.run.rundir import RunDir
from tests.helpers import small_grid


def _run(tmp_path, *settings: str, inner_copy: bool = False) -> RunDir:
    """A run dir of the small grid (folds 1 and 2) with `settings` applied, every training
    unit done; with `inner_copy`, each also has an `inner`-selection twin, as a tune run
    dir holds both protocols' models."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(small_grid(folds="[1, 2]", n_folds=2))
    run = tmp_path / "run"
    units = expand_plan(load_grids(str(grid), None, parse_settings(list(settings))), run)
    if inner_copy:
        units += [
            replace(
                u,
                id=f"{u.id}-inner",
                name=f"{u.name}@selection=inner",
                spec={**u.spec, "config": {**u.spec["config"], "selection": "inner"}},
            )
            for u in units
            if u.kind == "train"
        ]
    rundir = RunDir(run)
    rundir.claim("small", grid)
    rundir.write_dag(units)
    for u in units:
        if u.kind == "train":
            rundir.store.write("runs", u.id, [{"unit_id": u.id}])
    return rundir


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_export_of_a_sweep_refuses_to_average_its_points(tmp_path, capsys):
    rundir = _run(tmp_path, "train.lr=0.02,0.1")
    out = tmp_path / "exported"
    code = main(["export", "--run-dir", str(rundir.path), "--strategy", "ce", "--fold", "2",
                 "--format", "onnx", "--out", str(out)])  # fmt: skip
    line = _one_line_error(capsys)
    assert code == 2 and "2 configurations match" in line
    assert "--point train.lr=0.02" in line and "--point train.lr=0.1" in line
    assert not out.exists()


def test_predict_on_a_run_with_both_selections_refuses_to_average_them(tmp_path, capsys):
    rundir = _run(tmp_path, inner_copy=True)
    image = tmp_path / "face.png"
    code = main(["predict", "--run-dir", str(rundir.path), "--strategy", "ce", "--fold", "1",
                 str(image)])  # fmt: skip
    line = _one_line_error(capsys)
    assert code == 2 and "--selection heldout" in line and "--selection inner" in line


def _args(rundir: RunDir, **picked: object) -> argparse.Namespace:
    values: dict[str, object] = dict(
        run_dir=str(rundir.path), dataset=None, backbone=None, strategy="ce", seed=None,
        selection=None, point=None, fold=None, ensemble=True,
    )  # fmt: skip
    values.update(picked)
    return argparse.Namespace(**values)


@pytest.mark.parametrize("point", ["train.lr=0.02", "train.lr=0.1"])
def test_the_point_option_picks_one_configurations_folds(tmp_path, point):
    rundir = _run(tmp_path, "train.lr=0.02,0.1")
    chosen = select_units(_args(rundir, point=point))
    assert [c.fold for c in chosen] == [1, 2] and all(c.points == (point,) for c in chosen)
    lr = float(point.split("=")[1])
    specs = {u.id: u.spec for u in rundir.read_dag()}
    assert {specs[c.unit_id]["config"]["lr"] for c in chosen} == {lr}


def test_the_selection_option_picks_one_protocols_folds(tmp_path):
    rundir = _run(tmp_path, inner_copy=True)
    chosen = select_units(_args(rundir, selection="inner"))
    assert [c.fold for c in chosen] == [1, 2] and {c.selection for c in chosen} == {"inner"}


def test_a_fold_with_two_units_of_the_chosen_options_is_refused(tmp_path, capsys):
    """A swept run dir whose dag.json predates `points`: the options cannot tell the points
    apart, and fold 1 has two units; refused, not averaged."""
    rundir = _run(tmp_path, "train.lr=0.02,0.1")
    rundir.write_dag([replace(u, points=()) for u in rundir.read_dag()])
    code = main(["predict", "--run-dir", str(rundir.path), "--strategy", "ce", "--fold", "1",
                 str(tmp_path / "face.png")])  # fmt: skip
    line = _one_line_error(capsys)
    assert code == 2 and "fold 1 has 2 finished units" in line


@pytest.mark.parametrize(
    ("detector", "said"),
    [("box", "cropped on MTCNN's box"), ("center", "give face crops"), ("mtcnn", None)],
)
def test_predict_says_how_new_images_are_cropped_where_not_as_the_model_was(
    tmp_path, capsys, detector, said
):
    """A model trained on a dataset's boxes (new images have none) or on images that are the
    face already (a whole photo's centre is not) gets a line on stderr; an MTCNN model none."""
    import numpy as np
    import torch
    from PIL import Image

    from fer_core.models import build_model

    rundir = _run(tmp_path)
    (unit,) = [
        u for u in rundir.read_dag() if u.kind == "train" and u.fold == 1 and u.strategy == "ce"
    ]
    work = rundir.work_dir(unit.id)
    work.mkdir(parents=True, exist_ok=True)
    torch.save({"model": build_model("tiny", 3).state_dict(), "epoch": 1}, work / "best.pt")
    crop = {"detector": detector, "crop_size": 32, "margin": 0.2, "crop_method": 1}
    card = {"unit_id": unit.id, "backbone": "tiny", "classes": ["a", "b", "c"],
            "input_size": 32, "crop": crop, "fold": 1}  # fmt: skip
    (work / "best.json").write_text(json.dumps(card))
    image = tmp_path / "face.png"
    Image.fromarray(np.full((40, 40, 3), 128, dtype=np.uint8)).save(image)
    code = main(["predict", "--run-dir", str(rundir.path), "--strategy", "ce", "--fold", "1",
                 "--device", "cpu", "--fallback-center", str(image)])  # fmt: skip
    assert code == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "trained on" in line]
    if said is None:
        assert notes == []
    else:
        assert len(notes) == 1 and notes[0].startswith("predict: ") and said in notes[0], notes
