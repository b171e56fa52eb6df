"""No space left on device, for real: a small file system mounted by the test (a tmpfs; a
loop-mounted ext2 image where tmpfs mounts are refused), filled up to a measured level.

Needs root (mount). Where neither mount works the cases are skipped, saying why.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fer_core.checkpoints import BEST, DIGESTS, LAST, load_checkpoint
from fer_core.errors import FerError
from fer_core.io import atomic_torch_save, atomic_write_bytes
from orchestrator.backends.local import LocalBackend
from orchestrator.plan.profiles import LocalProfile
from orchestrator.run import worker
from orchestrator.run.status import status_rows
from orchestrator.run.store import Store
from tests.faults.crash_child import train
from tests.helpers import assert_grid_done_once, prepare_run, temp_files

MOUNT_SIZE = 8 << 20


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


@contextlib.contextmanager
def small_fs(path: Path, size: int = MOUNT_SIZE) -> Iterator[str]:
    """Mount a `size`-byte file system on `path` (tmpfs, else a loop-mounted ext2 image)."""
    path.mkdir(parents=True, exist_ok=True)
    kind = "tmpfs"
    mounted = _run("mount", "-t", "tmpfs", "-o", f"size={size // 1024}k", "tmpfs", str(path))
    image = path.parent / f".{path.name}.img"
    if mounted.returncode != 0:
        kind = "loop ext2"
        with open(image, "wb") as handle:
            handle.truncate(size)
        made = _run("mkfs.ext2", "-q", "-F", "-m", "0", str(image))
        mounted = (
            _run("mount", "-o", "loop", str(image), str(path)) if made.returncode == 0 else made
        )
        if mounted.returncode != 0:
            image.unlink(missing_ok=True)
            pytest.skip(f"cannot mount a small file system here (tmpfs or loop): {mounted.stderr}")
    try:
        yield kind
    finally:
        if _run("umount", str(path)).returncode != 0:
            _run("umount", "-l", str(path))
        image.unlink(missing_ok=True)


def fill_to(folder: Path, free: int) -> None:
    """Write a filler file so that about `free` bytes stay available in `folder`'s fs."""
    stat = os.statvfs(folder)
    available = stat.f_bavail * stat.f_frsize
    assert available > free, (available, free)
    with open(folder / "filler", "wb") as handle:
        handle.write(b"\0" * (available - free))


def test_an_atomic_write_on_a_full_disk_says_disk_full_and_keeps_the_old_file(tmp_path):
    """Fault: ENOSPC while a checkpoint / result file is written. Expect: FerError 'disk full'
    naming the file; the previous version intact; no temp file left; the store lists none."""
    mount = tmp_path / "small"
    with small_fs(mount, 1 << 20):
        target = mount / "last.pt"
        atomic_write_bytes(target, b"old checkpoint")
        fill_to(mount, 64 << 10)
        with pytest.raises(FerError, match=r"^disk full: could not write .*last\.pt") as error:
            atomic_torch_save({"weights": bytes(256 << 10)}, target)
        assert str(target) in str(error.value) and "intact" in str(error.value)
        assert "\n" not in str(error.value)
        assert target.read_bytes() == b"old checkpoint"
        assert not temp_files(mount)

        store = Store(mount / "run")
        with pytest.raises(FerError, match=r"^disk full: .*runs/u1\.parquet"):
            store.write("runs", "u1", [{"unit_id": "u1", "blob": os.urandom(256 << 10)}])
        assert store.files("runs") == [] and not temp_files(mount)


@pytest.mark.slow
def test_a_unit_whose_checkpoint_write_hits_a_full_disk_fails_clearly_and_resumes(
    study, twin_faces, tmp_path
):
    """Fault: the unit's work dir fills up during epoch 2's checkpoint write.
    Expect: the unit fails with 'disk full' and the file's path (failed.json, status);
    epoch 1's checkpoints stay intact; once space is back, a re-run resumes from epoch 1."""
    probe = tmp_path / "probe"  # the real checkpoint sizes of this model
    train(twin_faces, probe, epochs=1)
    best, last = (probe / BEST).stat().st_size, (probe / LAST).stat().st_size
    # Room for epoch 1 (best + last) and half a last.pt more: epoch 2 cannot fit.
    room = best + last + last // 2

    grid, run = study(strategies="[ce]", epochs=3)
    rundir, unit = prepare_run(grid, run)
    unit = unit["s1f1"]
    work = rundir.work_dir(unit.id)
    saved = tmp_path / "saved"
    with small_fs(work) as kind:
        fill_to(work, room)
        with pytest.raises(FerError, match="^disk full: could not write "):
            worker.run(run, unit.id)
        reason = rundir.failure(unit.id)
        assert reason.startswith("disk full: could not write ") and str(work) in reason, reason
        row = next(
            r for r in status_rows(rundir, LocalBackend(LocalProfile())) if r["unit_id"] == unit.id
        )
        assert row["state"] == "failed" and row["detail"] == reason
        digests = json.loads((work / DIGESTS).read_text())
        assert load_checkpoint(work / LAST, digests[LAST])["epoch"] == 0  # epoch 1, whole
        load_checkpoint(work / BEST, digests[BEST])
        assert not temp_files(work) and rundir.store.read("runs") is None
        (work / "filler").unlink()
        shutil.copytree(work, saved)
    print(f"disk full injected on a {kind} of {MOUNT_SIZE >> 20} MiB: {reason}")

    shutil.rmtree(work)  # space is back: the same files on a roomy disk
    shutil.copytree(saved, work)
    assert worker.run(run, unit.id) == "done"
    runs = assert_grid_done_once(rundir, 3)
    assert runs[unit.id]["resumed_from_epoch"] == 1
    assert rundir.failure(unit.id) is None
