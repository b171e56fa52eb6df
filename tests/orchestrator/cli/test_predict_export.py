"""`predict` and `export` on a small trained run: a real photo, the run's own test images,
fold ensembles, TorchScript and ONNX parity (onnxruntime), and the selection errors.

The run: 6 subjects of the synthetic CK+ twin as a manifest dataset, faces cropped by real
MTCNN (48 px), 2 subject folds, the tiny CNN trained for 2 epochs with `ce` and `focal`,
launched through the local backend like any grid.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from fer_core.data.faces import FaceSet
from fer_core.data.index import build_index
from orchestrator.cli import main
from orchestrator.run.launch import launch

pytestmark = pytest.mark.slow  # real MTCNN and a launch: tens of seconds for the module

ASTRONAUT_FACE = (185, 70, 265, 165)  # x0, y0, x1, y1 (as tests/fer_core/data/test_faces.py)
SUBJECTS = 6
GRID = """
name: predict
seed: 0
folds: [1, 2]
datasets:
  faces:
    kind: manifest
    root: {root}
    manifest: {manifest}
    crop_size: 48
    detector: mtcnn
    n_folds: 2
    focal: {{alpha: null, gamma: 2.0}}
backbones:
  tiny: {{weights: none, input_size: 48}}
experiments:
  - backbones: [tiny]
    strategies: [ce, focal]
train: {{epochs: 2, lr_step_epoch: 1, batch_size: 16}}
"""


@pytest.fixture(scope="module")
def trained_run(twin_root, cluster_file, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    index = build_index("ckplus", twin_root)
    subjects = sorted({r.subject for r in index.records})[:SUBJECTS]
    manifest = tmp / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "subject", "label"])
        for record in index.records:
            if record.subject in subjects:
                writer.writerow([record.path, record.subject, record.label_name])
    grid = tmp / "predict.yaml"
    grid.write_text(GRID.format(root=twin_root, manifest=manifest))
    rundir = launch(str(grid), run_dir=tmp / "run", jobs=2, cluster_file=cluster_file)
    assert len(rundir.store.done_ids("train")) == 4
    return rundir


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory) -> Path:
    skimage_data = pytest.importorskip("skimage.data")
    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).save(path)
    return path


def _units(rundir, strategy="ce"):
    """{fold: unit id} of the strategy's units."""
    return {u.fold: u.id for u in rundir.read_dag() if u.kind == "train" and u.strategy == strategy}


def _predict(rundir, tmp_path, *args, name="out.csv") -> list[dict]:
    out = tmp_path / name
    code = main(["predict", "--run-dir", str(rundir.path), "--strategy", "ce", *map(str, args),
                 "--device", "cpu", "--out", str(out)])  # fmt: skip
    assert code == 0
    if out.suffix == ".parquet":
        return pq.read_table(out).to_pylist()
    with open(out, newline="") as handle:
        return list(csv.DictReader(handle))


def _probabilities(row: dict, classes: list[str]) -> list[float]:
    return [float(row[f"p_{name}"]) for name in classes]


def _card(rundir, unit_id) -> dict:
    return json.loads((rundir.work_dir(unit_id) / "best.json").read_text())


def test_checkpoints_describe_themselves(trained_run):
    for unit_id in _units(trained_run).values():
        card = _card(trained_run, unit_id)
        faces = FaceSet.load(Path(trained_run.read_spec(unit_id)["spec"]["data_dir"]))
        assert card["unit_id"] == unit_id and card["backbone"] == "tiny"
        assert card["classes"] == faces.classes and card["input_size"] == 48
        assert card["crop"] == {"detector": "mtcnn", "crop_size": 48, "margin": 0.2,
                                "crop_method": 1}  # fmt: skip
        assert card["normalisation"]["order"] == "RGB" and card["dataset"] == "faces"
        digests = json.loads((trained_run.work_dir(unit_id) / "checkpoints.json").read_text())
        assert card["checkpoint_sha256"] == digests["best.pt"]
        best = torch.load(trained_run.work_dir(unit_id) / "best.pt", weights_only=True)
        assert set(best) == {"model", "epoch"}


def test_predict_on_a_real_photo(trained_run, astronaut, tmp_path):
    rows = _predict(trained_run, tmp_path, "--fold", 1, astronaut)
    assert len(rows) == 1
    row = rows[0]
    print("astronaut:", json.dumps(row))  # shown with pytest -s
    classes = _card(trained_run, _units(trained_run)[1])["classes"]
    probabilities = _probabilities(row, classes)
    assert math.isclose(sum(probabilities), 1, abs_tol=1e-5)
    assert row["face"] == "detected" and float(row["face_probability"]) > 0.9
    assert row["predicted"] == classes[int(np.argmax(probabilities))]
    x0, y0, x1, y1 = (float(row[k]) for k in ("box_x0", "box_y0", "box_x1", "box_y1"))
    fx0, fy0, fx1, fy1 = ASTRONAUT_FACE
    assert x0 <= fx0 and y0 <= fy0 and x1 >= fx1 and y1 >= fy1 and x1 - x0 < 200
    assert row["folds"] == "1" and row["units"] == _units(trained_run)[1]


def test_predict_reproduces_the_units_prediction_rows(trained_run, twin_root, tmp_path):
    unit_id = _units(trained_run)[1]
    stored = trained_run.store.read("predictions", {unit_id}).to_pylist()
    assert stored
    files = [twin_root / row["image_id"] for row in stored]
    # the training cache scores a frame without a face by its centre square: ask for the same
    rows = _predict(trained_run, tmp_path, "--fold", 1, "--fallback-center", *files)
    classes = _card(trained_run, unit_id)["classes"]
    by_image = {Path(r["image"]): r for r in rows}
    for row in stored:
        got = by_image[twin_root / row["image_id"]]
        assert np.allclose(_probabilities(got, classes), row["probabilities"], atol=1e-5)
        assert got["predicted"] == row["predicted_name"]


def test_ensemble_is_the_mean_of_the_folds(trained_run, astronaut, twin_root, tmp_path):
    first_frames = sorted(twin_root.rglob("*.png"))[:3]
    inputs = [astronaut, *first_frames]
    classes = _card(trained_run, _units(trained_run)[1])["classes"]
    folds = [_predict(trained_run, tmp_path, "--fold", k, "--fallback-center", *inputs,
                      name=f"f{k}.csv") for k in (1, 2)]  # fmt: skip
    ensemble = _predict(trained_run, tmp_path, "--ensemble", "--fallback-center", *inputs)
    for i, row in enumerate(ensemble):
        mean = np.mean([_probabilities(f[i], classes) for f in folds], axis=0)
        assert np.allclose(_probabilities(row, classes), mean, atol=1e-6)
        assert row["folds"] == "1,2"


def test_a_folder_without_faces_is_reported_not_centre_cropped(trained_run, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (120, 90), (128, 128, 128)).save(folder / "blank.png")
    rows = _predict(trained_run, tmp_path, "--fold", 2, folder, name="blank.parquet")
    assert len(rows) == 1 and rows[0]["face"] == "none" and rows[0]["predicted"] is None
    assert math.isnan(rows[0]["box_x0"]) and math.isnan(rows[0]["p_happy"])
    assert "no face found" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ([], "2 configurations match"),  # ce and focal
        (["--strategy", "ce"], "folds [1, 2]: pass --fold K or --ensemble"),
        (["--strategy", "ce", "--fold", "7"], "--fold 7"),
        (["--strategy", "ce>focal", "--fold", "1"], "--strategy ce>focal"),
    ],
)
def test_selection_errors_are_one_line(trained_run, astronaut, capsys, args, fragment):
    code = main(["predict", "--run-dir", str(trained_run.path), *args, str(astronaut)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and fragment in err[0]


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_matches_the_pytorch_model(trained_run, tmp_path, capsys, fmt):
    unit_id = _units(trained_run)[1]
    out = tmp_path / fmt
    code = main(["export", "--run-dir", str(trained_run.path), "--strategy", "ce", "--fold", "1",
                 "--format", fmt, "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and "largest |difference|" in printed
    description = json.loads((out / "model.json").read_text())
    assert description["parity_max_abs_diff"] <= 1e-4
    assert description["classes"] == _card(trained_run, unit_id)["classes"]
    assert "float32" in description["input"] and "0..255" in description["input"]

    # The exported file, run on the unit's cached test crops, gives its stored predictions.
    spec = trained_run.read_spec(unit_id)["spec"]
    faces = FaceSet.load(Path(spec["data_dir"]))
    crops = faces.images[faces.folds == 1].float()
    if fmt == "torchscript":
        model = torch.jit.load(str(out / "model.pt"))
        got = model(crops).detach().numpy()
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out / "model.onnx"))
        got = session.run(None, {"image": crops.numpy()})[0]
    stored = trained_run.store.read("predictions", {unit_id}).to_pylist()
    order = {image_id: i for i, image_id in enumerate(np.array(faces.image_ids)[faces.folds == 1])}
    for row in stored:
        assert np.allclose(got[order[row["image_id"]]], row["probabilities"], atol=1e-4)


def test_a_video_is_predicted_frame_by_frame(trained_run, astronaut, tmp_path):
    from tests.fer_core.inference.test_predict import _write_video

    pixels = np.asarray(Image.open(astronaut).convert("RGB").resize((256, 256)))
    video = tmp_path / "clip.mp4"
    _write_video(video, [pixels, np.ascontiguousarray(pixels[:, ::-1]), pixels])
    rows = _predict(trained_run, tmp_path, "--fold", 1, video)
    assert [r["frame"] for r in rows] == ["0", "1", "2"]
    assert all(r["face"] == "detected" and r["image"] == str(video) for r in rows)
