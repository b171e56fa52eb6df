"""Crashes while writing checkpoints and results, damaged files, and losses that go NaN.

Each case injects the fault for real: a process SIGKILLed between an atomic write's temp file
and its rename (tests/faults/crash_child.py), bytes flipped or cut off on disk (what an older
non-atomic version or a bad disk leaves), NaN logits in a real training loop.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from fer_core.checkpoints import BEST, DIGESTS, LAST, LAST_PREV, load_checkpoint
from fer_core.data.faces import FaceSet
from fer_core.errors import FerError
from fer_core.io import sha256_file
from orchestrator.backends.local import LocalBackend
from orchestrator.plan.profiles import LocalProfile
from orchestrator.run import worker
from orchestrator.run.rundir import RunDir
from orchestrator.run.status import status_rows
from tests.faults.crash_child import model_for, train
from tests.helpers import REPO, assert_grid_done_once, cli_env, prepare_run, temp_files


def _child(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tests.faults.crash_child", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=cli_env(OMP_NUM_THREADS="1"),
    )


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value, rtol=1e-5, atol=1e-6)


def _prepared(study, **kwargs) -> tuple[RunDir, dict]:
    """A run dir of a study grid with its DAG written and its data unit done."""
    return prepare_run(*study(**kwargs))


@pytest.fixture(scope="module")
def straight(twin_faces, tmp_path_factory) -> nn.Module:
    """The reference: 4 epochs, never interrupted."""
    _, model = train(twin_faces, tmp_path_factory.mktemp("straight"), epochs=4)
    return model


# --- case 5: a crash between temp write and rename ----------------------------------------------
@pytest.mark.slow
def test_killed_between_temp_write_and_rename_of_last_pt_resumes_from_the_intact_one(
    twin_faces, straight, tmp_path
):
    """Fault: the trainer is SIGKILLed after writing epoch 3's last.pt to its temp file,
    before the rename. Expect: last.pt is still epoch 2's, whole and matching its digest;
    the temp file is ignored; a resume redoes epoch 3 only and ends equal to a straight run."""
    killed = _child("train", twin_faces, tmp_path, 4, 3)
    assert killed.returncode == -9, killed.stderr
    leftovers = temp_files(tmp_path)
    assert [p.name.startswith(".tmp-last.pt.") for p in leftovers] == [True]
    digests = json.loads((tmp_path / DIGESTS).read_text())
    state = load_checkpoint(tmp_path / LAST, digests[LAST])  # whole, checksum holds
    assert state["epoch"] + 1 == 2

    outcome, model = train(twin_faces, tmp_path, epochs=4, model=_other_start(twin_faces))
    assert outcome.resumed_from_epoch == 2
    assert [e["epoch"] for e in outcome.epochs] == [1, 2, 3, 4]
    _assert_same_weights(straight, model)


def _faces(faces_dir) -> FaceSet:
    return FaceSet.load(faces_dir)


def _other_start(faces_dir) -> nn.Module:
    """A model with other start weights, as a new process might build: resume must not care."""
    model = model_for(_faces(faces_dir))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter))
    return model


@pytest.mark.slow
def test_killed_between_temp_write_and_rename_of_a_result_file_leaves_no_partial_unit(
    study, tmp_path
):
    """Fault: a worker is SIGKILLed while storing its result: once before the first result
    file (predictions) is renamed, once before the last one (runs, the 'done' marker).
    Expect: readers never see a partial file and the unit is not done; a re-run stores one
    row set, equal in count to the grid's."""
    rundir, unit = _prepared(study, strategies="[ce]", epochs=1)
    train_id = unit["s1f1"].id
    for table in ("predictions", "runs"):
        killed = _child("unit", rundir.path, train_id, table)
        assert killed.returncode == -9, killed.stderr
        assert not rundir.store.is_done(train_id, "train")
        assert rundir.store.read("runs") is None
        partial = [p for p in temp_files(rundir.path) if p.name.startswith(f".tmp-{train_id}.")]
        assert partial and not rundir.store.path(table, train_id).exists()
        listed = {p for t in ("runs", "predictions", "epochs") for p in rundir.store.files(t)}
        assert not any(p.name.startswith(".tmp-") for p in listed)
    assert worker.run(rundir.path, train_id) == "done"
    assert_grid_done_once(rundir, 1)


# --- case 5: damaged files (checksum, truncation by an older version) ---------------------------
@pytest.mark.slow
def test_a_corrupt_last_pt_is_caught_by_its_checksum_and_the_previous_one_resumes(
    twin_faces, straight, tmp_path, capfd
):
    """Fault: last.pt's bytes change on disk after it was written (its digest is recorded).
    Expect: the checksum catches it, the unit resumes from last.prev.pt (one epoch earlier),
    says so on stderr, and ends equal to a straight run."""
    train(twin_faces, tmp_path, epochs=3)
    raw = bytearray((tmp_path / LAST).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / LAST).write_bytes(bytes(raw))

    outcome, model = train(twin_faces, tmp_path, epochs=4, model=_other_start(twin_faces))
    assert outcome.resumed_from_epoch == 2  # last.prev.pt holds epoch 2
    assert "checkpoint is corrupt (sha256" in capfd.readouterr().err
    _assert_same_weights(straight, model)


@pytest.mark.slow
def test_a_truncated_last_pt_from_an_older_version_falls_back_and_both_bad_restart(
    twin_faces, straight, tmp_path, capfd
):
    """Fault: an older version (no digests, no atomic rename) left a truncated last.pt.
    Expect: it does not load, so last.prev.pt is used; with both bad the unit starts over;
    either way the result equals a straight run."""
    train(twin_faces, tmp_path, epochs=3)
    (tmp_path / DIGESTS).unlink()  # the older version wrote no checkpoints.json
    data = (tmp_path / LAST).read_bytes()
    (tmp_path / LAST).write_bytes(data[: len(data) // 3])
    outcome, model = train(twin_faces, tmp_path, epochs=4, model=_other_start(twin_faces))
    assert outcome.resumed_from_epoch == 2
    assert "not resuming from last.pt" in capfd.readouterr().err
    _assert_same_weights(straight, model)

    both = tmp_path / "both"
    train(twin_faces, both, epochs=3)
    for name in (LAST, LAST_PREV):
        (both / name).write_bytes(b"PK\x03\x04 cut short")
    outcome, model = train(twin_faces, both, epochs=4, model=model_for(_faces(twin_faces)))
    assert outcome.resumed_from_epoch == 0  # from scratch: the seeded start weights
    assert "starting from scratch" in capfd.readouterr().err
    _assert_same_weights(straight, model)


def test_a_corrupt_best_pt_is_never_used_to_score(twin_faces, tmp_path, capfd):
    """Fault: best.pt is damaged after training. Expect: scoring refuses it by checksum, and a
    resume does not trust a state that relies on it: it trains again from scratch."""
    from fer_core.checkpoints import load_best

    _, model = train(twin_faces, tmp_path, epochs=2)
    raw = bytearray((tmp_path / BEST).read_bytes())
    raw[-20] ^= 0xFF
    (tmp_path / BEST).write_bytes(bytes(raw))
    with pytest.raises(FerError, match=r"best\.pt: checkpoint is corrupt"):
        load_best(model, tmp_path)
    outcome, _ = train(twin_faces, tmp_path, epochs=2)
    assert outcome.resumed_from_epoch == 0
    assert "relies on best.pt" in capfd.readouterr().err
    assert sha256_file(tmp_path / BEST) == json.loads((tmp_path / DIGESTS).read_text())[BEST]


@pytest.mark.slow
def test_a_truncated_result_file_is_invisible_and_its_unit_runs_again(study):
    """Fault: a unit's runs file is cut short (an older non-atomic version crashed mid-write).
    Expect: readers skip it, the unit is not done (status: todo), and re-running it stores
    one whole row set."""
    rundir, unit = _prepared(study, strategies="[ce]", epochs=1)
    train_id = unit["s1f1"].id
    assert worker.run(rundir.path, train_id) == "done"
    path = rundir.store.path("runs", train_id)
    path.write_bytes(path.read_bytes()[:-40])
    assert not rundir.store.is_done(train_id, "train")
    assert rundir.store.read("runs") is None
    rows = {r["unit_id"]: r["state"] for r in status_rows(rundir, LocalBackend(LocalProfile()))}
    assert rows[train_id] == "todo"
    assert worker.run(rundir.path, train_id) == "done"
    assert_grid_done_once(rundir, 1)


# --- case 7: NaN / inf loss ---------------------------------------------------------------------
class NaNOnBatches(nn.Module):
    """Wraps a model; its training forward returns NaN logits on chosen batches of each epoch."""

    def __init__(self, inner: nn.Module, bad: set[int], per_epoch: int):
        super().__init__()
        self.inner, self.bad, self.per_epoch, self.calls = inner, bad, per_epoch, 0

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if (self.calls - 1) % self.per_epoch in self.bad:
                return out * float("nan")
        return out


def _per_epoch(faces_dir) -> int:
    from fer_core.data.protocol import kfold_roles
    from fer_core.unit import stage_data

    faces = _faces(faces_dir)
    n = len(stage_data(faces, kfold_roles(faces.folds, 1, 10, "heldout")).train_labels)
    return -(-n // 64)


def test_a_nan_loss_stops_the_unit_naming_the_epoch_and_stores_nothing(study):
    """Fault: the loss diverges to NaN/inf (LR 1e12, a real divergence).
    Expect: the unit fails with a one-line reason naming the epoch; no result rows."""
    rundir, unit = _prepared(study, strategies="[ce]", epochs=2, lr=1e12, momentum=0.0)
    train_id = unit["s1f1"].id
    with pytest.raises(FerError, match=r"epoch 1: training loss is (nan|inf)"):
        worker.run(rundir.path, train_id)
    assert rundir.failure(train_id).startswith("epoch 1: training loss is")
    assert "nan_policy: skip" in rundir.failure(train_id)
    assert rundir.store.read("runs") is None and rundir.store.read("epochs") is None


def test_nan_policy_skip_drops_the_bad_batches_and_fail_names_the_epoch(twin_faces, tmp_path):
    """Fault: two batches per epoch give NaN logits. Expect: `nan_policy: skip` drops exactly
    those (counted in the epochs rows) and the loss stays finite; `fail` stops at epoch 1."""
    per_epoch = _per_epoch(twin_faces)
    model = NaNOnBatches(model_for(_faces(twin_faces)), {1, 3}, per_epoch)
    outcome, _ = train(twin_faces, tmp_path / "skip", epochs=2, model=model, nan_policy="skip")
    assert [e["skipped_batches"] for e in outcome.epochs] == [2, 2]
    assert all(torch.isfinite(torch.tensor(e["train_loss"])) for e in outcome.epochs)

    model = NaNOnBatches(model_for(_faces(twin_faces)), {1}, per_epoch)
    with pytest.raises(FerError, match=r"^epoch 1: training loss is nan"):
        train(twin_faces, tmp_path / "fail", epochs=2, model=model)

    model = NaNOnBatches(model_for(_faces(twin_faces)), set(range(per_epoch)), per_epoch)
    with pytest.raises(FerError, match=r"^epoch 1: the loss was not finite for every batch"):
        train(twin_faces, tmp_path / "all", epochs=1, model=model, nan_policy="skip")
