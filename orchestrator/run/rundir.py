"""The run directory: everything one launched grid owns, keyed by unit id.

```
RUN_DIR/run.json              grid name and file (a run dir holds one grid's results)
RUN_DIR/grid.yaml             the effective grid of the last launch (overrides applied)
RUN_DIR/digests.json          file digests by stat (data identity, best.pt checks): a cache
RUN_DIR/dag.json              the units of the last launch, in topological order
RUN_DIR/units/<id>/spec.json  what the worker runs; work/ holds checkpoints; *.log the logs
RUN_DIR/units/<id>/failed.json  the last failure's one-line reason (removed on success)
RUN_DIR/submissions.json      unit id -> backend, scheduler job id, submit time, attempts
RUN_DIR/data/<dataset>/...    raw synthetic twins and prepared data (index, face crops)
RUN_DIR/store/<table>/<id>.parquet  the results (orchestrator.run.store)
RUN_DIR/launch.lock           held while a launch submits (two launches cannot interleave)
RUN_DIR/grid.yaml             the effective grid of the last launch (file + --set overrides)
RUN_DIR/by-label/<dataset>/<backbone>/<strategy>/fNN/seedS[/values] -> ../units/<id>
                              readable aliases of the current DAG's unit folders (symlinks;
                              `>` is `-` there: `ce-focal`; orchestrator.plan.labels)
RUN_DIR/tensorboard/...       TensorBoard event files, one run per unit, same layout
```
Paths are keyed by unit id, never by scheduler job id, so logs and checkpoints survive
requeues and re-launches.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from fer_core.errors import FerError
from fer_core.io import atomic_write_text
from orchestrator.plan.dag import Unit
from orchestrator.plan.labels import label_parts
from orchestrator.run.store import Store

BY_LABEL = "by-label"


class RunDir:
    """Accessors for one run directory."""

    def __init__(self, path: Path):
        self.path = Path(path).resolve()
        self.store = Store(self.path)

    # --- identity -------------------------------------------------------------------------
    def claim(self, grid_name: str, grid_path: Path) -> None:
        """Bind this run dir to a grid; refuse a run dir that holds another grid's results."""
        if self.path.exists() and not self.path.is_dir():
            raise FerError(f"--run-dir {self.path}: is a file, not a folder; give a folder")
        info_path = self.path / "run.json"
        if info_path.is_file():
            info = json.loads(info_path.read_text())
            if info.get("grid") != grid_name:
                raise FerError(
                    f"{self.path}: holds results of grid {info.get('grid')!r}, not "
                    f"{grid_name!r}; use another --run-dir"
                )
            return
        self.path.mkdir(parents=True, exist_ok=True)
        info = {"grid": grid_name, "grid_file": str(grid_path), "created_at": time.time()}
        atomic_write_text(info_path, json.dumps(info, indent=1))

    def info(self) -> dict[str, Any]:
        path = self.path / "run.json"
        if not path.is_file():
            raise FerError(f"{self.path}: not a run directory (no run.json); launch a grid first")
        return json.loads(path.read_text())

    def write_grid(self, mapping: dict[str, Any]) -> None:
        """Keep the effective grid (after command-line overrides, as validated) beside its
        results: what produced them, readable without the grid file or the command line."""
        body = yaml.safe_dump(mapping, sort_keys=False, allow_unicode=True)
        header = "# The effective grid of the last launch into this run dir (overrides applied).\n"
        atomic_write_text(self.path / "grid.yaml", header + body)

    def write_profile(self, cluster: str, cluster_file: Path | None) -> None:
        """`profile.json`: the execution profile this run dir was launched with, so `status`
        and `cancel` ask the right backend. Written before anything is submitted."""
        body = {
            "cluster": cluster,
            "cluster_file": str(Path(cluster_file).resolve()) if cluster_file else None,
        }
        atomic_write_text(self.path / "profile.json", json.dumps(body))

    def profile(self) -> tuple[str, Path | None]:
        """(profile name, cluster file) of the last launch; `local` when none was recorded."""
        path = self.path / "profile.json"
        saved = json.loads(path.read_text()) if path.is_file() else {"cluster": "local"}
        return saved["cluster"], Path(saved["cluster_file"]) if saved.get("cluster_file") else None

    # --- the DAG ----------------------------------------------------------------------------
    def write_dag(self, units: list[Unit]) -> None:
        atomic_write_text(self.path / "dag.json", json.dumps([asdict(u) for u in units], indent=1))
        for unit in units:
            spec_path = self.unit_dir(unit.id) / "spec.json"
            body = json.dumps({"kind": unit.kind, "name": unit.name, "spec": unit.spec}, indent=1)
            if not spec_path.is_file() or spec_path.read_text() != body:
                atomic_write_text(spec_path, body)
        self._link_labels(units)

    def label_path(self, unit: Unit) -> Path:
        """A unit's readable alias, `RUN_DIR/by-label/...` (a symlink to its folder)."""
        seed = (unit.spec.get("config") or {}).get("seed")
        parts = label_parts(unit.name, unit.dataset, unit.backbone, unit.strategy, unit.fold, seed)
        return self.path.joinpath(BY_LABEL, *parts)

    def _link_labels(self, units: list[Unit]) -> None:
        """Point `by-label/` at the units of this DAG: stale links go, each link is replaced
        atomically (a temp link renamed over it)."""
        root = self.path / BY_LABEL
        wanted = {self.label_path(unit): self.unit_dir(unit.id) for unit in units}
        if root.is_dir():
            for directory, subdirs, files in os.walk(root, topdown=False):
                for name in subdirs + files:
                    path = Path(directory) / name
                    if (
                        path.is_symlink()
                        and wanted.get(path) != self.path / "units" / Path(os.readlink(path)).name
                    ):
                        path.unlink()
                    elif not path.is_symlink() and path.is_dir() and not any(path.iterdir()):
                        path.rmdir()
        for link, target in wanted.items():
            if link.is_symlink():
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            temp = link.with_name(f".tmp-{link.name}-{os.getpid()}")
            temp.unlink(missing_ok=True)
            os.symlink(os.path.relpath(target, link.parent), temp)
            os.replace(temp, link)

    def read_dag(self) -> list[Unit]:
        path = self.path / "dag.json"
        if not path.is_file():
            raise FerError(f"{self.path}: no dag.json; launch a grid into this run dir first")
        units = []
        for raw in json.loads(path.read_text()):
            raw["deps"] = tuple(raw["deps"])
            raw["strategies"] = tuple(raw["strategies"])
            units.append(Unit(**raw))
        return units

    # --- units ------------------------------------------------------------------------------
    def unit_dir(self, unit_id: str) -> Path:
        return self.path / "units" / unit_id

    def work_dir(self, unit_id: str) -> Path:
        return self.unit_dir(unit_id) / "work"

    def read_spec(self, unit_id: str) -> dict[str, Any]:
        path = self.unit_dir(unit_id) / "spec.json"
        if not path.is_file():
            raise FerError(f"{path}: unit spec not found; re-run launch")
        return json.loads(path.read_text())

    def reset_unit(self, unit_id: str) -> None:
        """Forget a unit's result and checkpoints, so it runs again from scratch. The `runs`
        file goes first: a crash part-way leaves the unit not done, never half-reset done."""
        for table in ("runs", "predictions", "epochs"):
            self.store.path(table, unit_id).unlink(missing_ok=True)
        shutil.rmtree(self.work_dir(unit_id), ignore_errors=True)

    def mark_failed(self, unit_id: str, reason: str) -> None:
        body = {"reason": reason, "at": time.time()}
        atomic_write_text(self.unit_dir(unit_id) / "failed.json", json.dumps(body))

    def clear_failed(self, unit_id: str) -> None:
        (self.unit_dir(unit_id) / "failed.json").unlink(missing_ok=True)

    def failure(self, unit_id: str) -> str | None:
        path = self.unit_dir(unit_id) / "failed.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())["reason"]
        except (json.JSONDecodeError, KeyError):
            return "failed (unreadable failed.json)"

    # --- submissions ------------------------------------------------------------------------
    def submissions(self) -> dict[str, dict[str, Any]]:
        path = self.path / "submissions.json"
        if not path.is_file():
            return {}
        return json.loads(path.read_text())

    def record_submissions(self, records: dict[str, dict[str, Any]]) -> None:
        """Merge scheduler job records (unit id -> record); attempts count up per unit."""
        current = self.submissions()
        for unit_id, record in records.items():
            attempts = current.get(unit_id, {}).get("attempts", 0) + 1
            current[unit_id] = {**record, "attempts": attempts, "submitted_at": time.time()}
        atomic_write_text(self.path / "submissions.json", json.dumps(current, indent=1))

    def launcher(self) -> int | None:
        """The pid of the live launch holding `launch.lock` (it writes its pid there and
        empties the file on release), or None. Read, never locked: a launch starting now
        must not find the lock taken by a reader."""
        try:
            pid = int((self.path / "launch.lock").read_text().strip() or 0)
        except (OSError, ValueError):
            return None
        if pid <= 0:
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None  # killed without releasing: the kernel dropped its flock
        except PermissionError:
            pass
        return pid

    @contextmanager
    def launch_lock(self) -> Iterator[None]:
        """Held while launching; a second launch on the same run dir is refused at once.

        The holder's pid is written into the lock file, so the refusal can name it. The lock
        is the kernel's (flock): a launcher that dies, even by SIGKILL, releases it.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        lock_path = self.path / "launch.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)  # no truncation before the lock
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                raise FerError(
                    f"{self.path}: the run dir is busy: another launch (pid {holder}) holds "
                    f"{lock_path.name}; wait for it to finish or stop it, then launch again"
                ) from exc
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
