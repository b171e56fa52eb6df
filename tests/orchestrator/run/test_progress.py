"""Progress output: bars for indexing and cropping, the live view's data, `status --watch`,
and TensorBoard event files (read back with TensorBoard's own reader)."""

from __future__ import annotations

import io
import os
import time

import pytest
from PIL import Image

from fer_core.data.faces import prepare_faces
from fer_core.data.index import build_index
from fer_core.progressbar import ProgressBar
from orchestrator.run.progress import record_epoch, render, running_detail, watch
from orchestrator.run.states import State
from orchestrator.run.status import status_rows
from orchestrator.run.tblog import EventWriter
from tests.orchestrator.report.fake_results import make_run


def _epoch(epoch: int, loss: float, seconds: float = 2.0) -> dict:
    return {
        "epoch": epoch,
        "lr": 0.05 if epoch < 3 else 0.005,
        "train_loss": loss,
        "train_accuracy": 0.25 * epoch,
        "selection_accuracy": 0.2 * epoch,
        "skipped_batches": 0,
        "seconds": seconds,
        "finished_at": 1_700_000_000.0 + epoch,
    }


def test_plain_progress_lines_when_not_on_a_terminal():
    out = io.StringIO()
    bar = ProgressBar("faces (mtcnn)", stream=out)
    for done in range(1, 101):
        bar(done, 100)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in out.getvalue()
    assert lines[0].startswith("faces (mtcnn): 10/100 (10%)") and "/s, ETA " in lines[0]
    assert lines[-1].startswith("faces (mtcnn): 100/100 (100%)") and "took" in lines[-1]


def test_a_bar_with_rate_and_eta_on_a_terminal():
    out = io.StringIO()
    bar = ProgressBar("index ckplus", stream=out, tty=True)
    bar(1, 4)
    bar(4, 4)
    text = out.getvalue()
    assert text.startswith("\rindex ckplus [") and "1/4" in text and "ETA" in text
    assert text.endswith("4/4 " + text.rsplit("4/4 ", 1)[1]) and text.endswith("\n")


@pytest.fixture
def manifest_tree(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    rows = ["path,subject,label"]
    for i in range(20):
        Image.new("RGB", (40, 30), (10 * i, 0, 0)).save(root / f"img{i}.png")
        rows.append(f"img{i}.png,S{i % 4},{['a', 'b'][i % 2]}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def test_indexing_and_cropping_report_progress_and_centre_crops_say_so(
    manifest_tree, tmp_path, capsys
):
    index = build_index("manifest", manifest_tree, n_folds=2)
    report = prepare_faces(index, tmp_path / "faces", 32, detector="center")
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("index manifest: 2/20 (10%)") and out[9].startswith(
        "index manifest: 20/20 (100%)"
    )
    assert out[-1].startswith("faces (center): 20/20 (100%)")
    assert (report.total, report.detected, report.fallback) == (20, 0, 0)


def test_running_detail_shows_epoch_loss_and_eta(tmp_path):
    fake = make_run(tmp_path / "run", datasets=("ckplus",), folds=(1,))
    unit = fake.units[1]
    assert running_detail(fake.rundir, unit.id) == ""  # before its first epoch
    record_epoch(fake.rundir, unit.id, _epoch(1, 1.5, seconds=4.0), epochs=4)
    record_epoch(fake.rundir, unit.id, _epoch(2, 1.25, seconds=6.0), epochs=4)
    now = time.time()
    assert running_detail(fake.rundir, unit.id, now=now) == "epoch 2/4  loss 1.250  ETA 10s"


def test_watch_prints_the_state_and_ends_when_nothing_runs(tmp_path):
    fake = make_run(
        tmp_path / "run", datasets=("ckplus",), folds=(1, 2), skip={("ckplus", "ce", 2)}
    )
    fake.rundir.mark_failed(fake.train_ids[("ckplus", "ce", 2)], "epoch 1: training loss is nan")
    out = io.StringIO()
    assert watch(fake.rundir, None, interval=0.01, out=out) == 1
    text = out.getvalue()
    assert text.startswith("5 units: done 4, failed 1\n")
    assert "failed   ckplus/f02/inception_v3/ce  epoch 1: training loss is nan" in text


def test_the_live_block_lists_running_units(tmp_path):
    fake = make_run(tmp_path / "run", datasets=("ckplus",), folds=(1,))
    rows = status_rows(fake.rundir, None)
    unit = rows[1]
    rows[1] = {**unit, "state": State.RUNNING}
    record_epoch(fake.rundir, unit["unit_id"], _epoch(1, 2.0), epochs=3)
    lines = render(fake.rundir, rows, width=80, elapsed=75)
    assert lines[0] == "3 units: done 2, running 1  (1m15s)"
    assert lines[1].startswith(f"  running  {unit['name']}  epoch 1/3  loss 2.000  ETA ")
    assert all(len(line) <= 80 for line in render(fake.rundir, rows, width=30))


def test_event_files_are_read_by_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "tensorboard" / "ckplus" / "tiny" / "ce-focal" / "f01" / "seed0"
    writer = EventWriter(logdir)
    for epoch, loss in ((1, 1.5), (2, 0.75), (3, 0.5)):
        writer.epoch(_epoch(epoch, loss))
    accumulator = EventAccumulator(str(logdir))
    accumulator.Reload()
    assert set(accumulator.Tags()["scalars"]) == {
        "train/loss",
        "train/accuracy",
        "selection/accuracy",
        "lr",
    }
    assert [(e.step, e.value) for e in accumulator.Scalars("train/loss")] == [
        (1, 1.5),
        (2, 0.75),
        (3, 0.5),
    ]
    assert [e.value for e in accumulator.Scalars("lr")] == pytest.approx([0.05, 0.05, 0.005])
    assert accumulator.Scalars("selection/accuracy")[2].value == pytest.approx(0.6)


def test_watch_keeps_going_while_a_launch_holds_the_run_dir(tmp_path):
    """Between one unit's end and its dependant's start nothing runs: a local launch still
    has work, so `status --watch` must not end then."""
    fake = make_run(tmp_path / "run", datasets=("ckplus",), folds=(1,))
    assert fake.rundir.launcher() is None
    with fake.rundir.launch_lock():
        assert fake.rundir.launcher() == os.getpid()
    assert fake.rundir.launcher() is None
