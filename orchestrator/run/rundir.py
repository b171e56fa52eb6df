"""The run directory: everything one launched grid owns, keyed by unit id.

```
RUN_DIR/run.json              grid name and file (a run dir holds one grid's results)
RUN_DIR/grid.yaml             the effective grid of the last launch (overrides applied)
RUN_DIR/digests.json          file digests by stat (data identity, best.pt checks): a cache
RUN_DIR/dag.json              the units of the last launch, in topological order
RUN_DIR/profile.json          the execution profile of the last launch (status, cancel)
RUN_DIR/units/<id>/spec.json  what the worker runs; work/ holds checkpoints; *.log the logs
RUN_DIR/units/<id>/failed.json  the last failure's one-line reason (removed on success);
                              failed.lock: held while a rank of a data-parallel unit writes it
RUN_DIR/units/<id>/local.rank<r>.log  rank r > 0 of a data-parallel unit (local.log: rank 0)
RUN_DIR/units/<id>/live.json  the last epoch's figures, for the live view (run.progress)
RUN_DIR/units/<id>/slurm/     a packed SLURM unit's worker output
RUN_DIR/submissions.json      unit id -> backend, scheduler job id, submit time, attempts
RUN_DIR/arrays/<key>/         one SLURM array: tasks.json (unit ids per task), submitit files
RUN_DIR/data/<dataset>/raw    a synthetic twin's raw tree
RUN_DIR/data/<dataset>/<id>/  the prepared data of prepare unit <id> (index, face crops)
RUN_DIR/store/<table>/<id>.parquet  the results (orchestrator.run.store)
RUN_DIR/launch.lock           held while a launch submits (two launches cannot interleave)
RUN_DIR/tune/                 the `tune` search (orchestrator.tune): trials/<config id>/
                              split-<k>/split.json, <experiment>/, choice.json; each trial
                              split is a unit of its own under units/<id>/ (kind `trial`)
RUN_DIR/by-label/<dataset>/<backbone>/<strategy>/fNN/seedS[/values] -> ../units/<id>
                              readable aliases of the current DAG's unit folders (symlinks;
                              `>` is `-` there: `ce-focal`; orchestrator.plan.labels); a
                              copy that followed them gets its links back at the next launch
RUN_DIR/tensorboard/...       TensorBoard event files, one run per unit, same layout;
                              tune trial splits under tensorboard/tune/
```
Every path of this layout is a `RunDir` method; no other module joins names onto a run dir.
Paths are keyed by unit id, never by scheduler job id, so logs and checkpoints survive
requeues and re-launches.
"""

from __future__ import annotations

import fcntl
import filecmp
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypedDict

import yaml

from fer_core.digest_cache import DigestCache
from fer_core.errors import FerError
from fer_core.io import TEMP_PREFIX, atomic_write_text
from fer_core.spec import UnitSpec
from orchestrator.plan.labels import label_parts
from orchestrator.plan.unit import Unit
from orchestrator.run.store import Store

BY_LABEL = "by-label"
DEFAULT_RUNS = Path("runs")  # a grid's run dir when none is given: runs/<grid name>
TB_DIR = "tensorboard"  # TensorBoard's --logdir (orchestrator.run.tblog writes the files)
TRIAL = "trial"  # the kind of a tune trial split's unit (not in the DAG; orchestrator.tune)


class RunInfo(TypedDict):
    """`run.json`: the grid a run dir belongs to (`RunDir.claim` writes it once)."""

    grid: str
    grid_file: str
    created_at: float


class SpecFile(TypedDict):
    """`units/<id>/spec.json`: a unit's kind (prepare, train, trial), its label and its spec
    in JSON form, a `fer_core.spec.PrepareSpec` or `UnitSpec` by kind (the worker parses it)."""

    kind: str
    name: str
    spec: dict[str, Any]


class _SubmissionKeys(TypedDict):
    backend: str  # local, slurm, ray
    job_id: str  # local: the worker's pid; slurm: `<array>_<task>` or a job id; ray: a trial


class RankProcess(TypedDict):
    """One rank's process of a data-parallel unit run by the local backend: its pid and start
    time (`orchestrator.run.processes.process_start`), so `status` and `cancel` find every
    rank, also those of a killed launcher."""

    pid: int
    start: str | None


class EarlierJob(TypedDict):
    """A job that ran a unit before its newest (a re-launch submitted another)."""

    backend: str
    job_id: str
    submitted_at: float | None


class Submission(_SubmissionKeys, total=False):
    """One unit's entry in submissions.json: the job that runs (or ran) it. A backend
    gives backend, job_id and its own keys; `record_submissions` adds the other two."""

    attempts: int  # submissions of this unit so far
    submitted_at: float  # time.time() of the latest
    array: str  # slurm: the key of the array submission (RUN_DIR/arrays/<key>/)
    pack: list[str]  # slurm: the units sharing this job, when it runs a pack
    pid_start: str | None  # local: the worker's start time (/proc), so a reused pid is no match
    ranks: list[RankProcess]  # local, a data-parallel unit: every rank's process, rank 0 first
    launcher_pid: int  # ray: the launcher, which is what runs the trials
    # the unit's earlier jobs, oldest first: a job that died before its worker wrote a row
    # is still found by the accounting, however long ago it was submitted
    earlier_jobs: list[EarlierJob]


class RunDir:
    """Accessors for one run directory."""

    def __init__(self, path: Path):
        self.path = Path(path).resolve()
        self.store = Store(self.path)

    @staticmethod
    def default_path(grid_name: str) -> Path:
        """Where a grid's results go when no --run-dir is given (launch, tune, status...)."""
        return DEFAULT_RUNS / grid_name

    # --- identity -------------------------------------------------------------------------
    @property
    def info_path(self) -> Path:
        """`run.json`: the grid this run dir belongs to."""
        return self.path / "run.json"

    @property
    def dag_path(self) -> Path:
        """`dag.json`: the current DAG (the last launch's units)."""
        return self.path / "dag.json"

    @property
    def grid_copy_path(self) -> Path:
        """`grid.yaml`: the effective grid of the last launch."""
        return self.path / "grid.yaml"

    def claim(self, grid_name: str, grid_path: Path) -> None:
        """Bind this run dir to a grid; refuse a run dir that holds another grid's results."""
        if self.path.exists() and not self.path.is_dir():
            raise FerError(f"--run-dir {self.path}: is a file, not a folder; give a folder")
        info_path = self.info_path
        if info_path.is_file():
            info = json.loads(info_path.read_text())
            if info.get("grid") != grid_name:
                raise FerError(
                    f"{self.path}: holds results of grid {info.get('grid')!r}, not "
                    f"{grid_name!r}; use another --run-dir"
                )
            return
        self.path.mkdir(parents=True, exist_ok=True)
        claimed: RunInfo = {
            "grid": grid_name,
            "grid_file": str(grid_path),
            "created_at": time.time(),
        }
        atomic_write_text(info_path, json.dumps(claimed, indent=1))

    def info(self) -> RunInfo:
        path = self.info_path
        if not path.is_file():
            raise FerError(f"{self.path}: not a run directory (no run.json); launch a grid first")
        return json.loads(path.read_text())

    def write_grid(self, mapping: dict[str, Any]) -> None:
        """Keep the effective grid (after command-line overrides, as validated) beside its
        results: what produced them, readable without the grid file or the command line."""
        body = yaml.safe_dump(mapping, sort_keys=False, allow_unicode=True)
        header = "# The effective grid of the last launch into this run dir (overrides applied).\n"
        atomic_write_text(self.grid_copy_path, header + body)

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
        links = self._label_links(units)  # first: a refusal leaves the run dir as it was
        atomic_write_text(self.dag_path, json.dumps([_dag_entry(u) for u in units], indent=1))
        for unit in units:
            self.write_spec(unit.id, unit.kind, unit.name, unit.spec)
        self._link_labels(links)

    def write_spec(self, unit_id: str, kind: str, name: str, spec: dict[str, Any]) -> None:
        """`units/<id>/spec.json`: what the worker runs (rewritten only when it changed)."""
        path = self.unit_dir(unit_id) / "spec.json"
        body: SpecFile = {"kind": kind, "name": name, "spec": spec}
        text = json.dumps(body, indent=1)
        if not path.is_file() or path.read_text() != text:
            atomic_write_text(path, text)

    @property
    def by_label(self) -> Path:
        """Readable aliases of the current DAG's unit folders."""
        return self.path / BY_LABEL

    def label_path(self, unit: Unit) -> Path:
        """A unit's readable alias, `RUN_DIR/by-label/...` (a symlink to its folder)."""
        seed = (unit.spec.get("config") or {}).get("seed")
        parts = label_parts(unit.name, unit.dataset, unit.backbone, unit.strategy, unit.fold, seed)
        return self.by_label.joinpath(*parts)

    def _label_links(self, units: list[Unit]) -> dict[Path, Path]:
        """Each unit's alias -> its folder. A real folder where an alias belongs is what a
        copy of the run dir that follows links (`cp -rL`, scp, zip) leaves: a copy of that
        unit's folder, replaced by the link; one holding anything the unit's folder does not
        is refused, naming it, so nothing a person put there is deleted."""
        links = {self.label_path(unit): self.unit_dir(unit.id) for unit in units}
        for link, target in links.items():
            if link.is_dir() and not link.is_symlink():
                extra = _first_not_in(link, target)
                if extra is not None:
                    raise FerError(
                        f"{link}: a folder where the link to {target} belongs, holding "
                        f"{extra.relative_to(link)} that the unit's folder does not; move it "
                        f"out of {self.by_label}, then launch again"
                    )
        return links

    def _link_labels(self, wanted: dict[Path, Path]) -> None:
        """Point `by-label/` at the units of this DAG (`_label_links`): stale links go, each
        link is replaced atomically (a temp link renamed over it)."""
        root = self.by_label
        if root.is_dir():
            for directory, subdirs, files in os.walk(root, topdown=False):
                for name in subdirs + files:
                    path = Path(directory) / name
                    if path.is_symlink() and wanted.get(path) != self.unit_dir(
                        Path(os.readlink(path)).name
                    ):
                        path.unlink()
                    elif not path.is_symlink() and path.is_dir() and not any(path.iterdir()):
                        path.rmdir()
        for link, target in wanted.items():
            if link.is_symlink():
                continue
            if link.is_dir():  # a copy of `target` (checked by _label_links)
                shutil.rmtree(link)
            link.parent.mkdir(parents=True, exist_ok=True)
            temp = link.with_name(f".tmp-{link.name}-{os.getpid()}")
            temp.unlink(missing_ok=True)
            os.symlink(os.path.relpath(target, link.parent), temp)
            os.replace(temp, link)

    def read_dag(self) -> list[Unit]:
        path = self.dag_path
        if not path.is_file():
            raise FerError(f"{self.path}: no dag.json; launch a grid into this run dir first")
        units = []
        for raw in json.loads(path.read_text()):
            raw["deps"] = tuple(raw["deps"])
            raw["strategies"] = tuple(raw["strategies"])
            raw["points"] = tuple(raw.get("points", ()))  # absent: no sweep, or an older run
            units.append(Unit(**raw))
        return units

    # --- units ------------------------------------------------------------------------------
    def unit_dir(self, unit_id: str) -> Path:
        return self.path / "units" / unit_id

    def work_dir(self, unit_id: str) -> Path:
        """Where `run_unit` keeps a training unit's checkpoints (its children's parent_dir)."""
        return self.unit_dir(unit_id) / "work"

    def unit_log(self, unit_id: str, backend: str) -> Path:
        """The worker output of a unit run by the local or Ray backend (or a tune trial)."""
        return self.unit_dir(unit_id) / f"{backend}.log"

    def rank_log(self, unit_id: str, backend: str, rank: int) -> Path:
        """The output of rank `rank` > 0 of a data-parallel unit, beside the unit's log of
        record (rank 0's, `unit_log`)."""
        return self.unit_dir(unit_id) / f"{backend}.rank{rank}.log"

    def live_path(self, unit_id: str) -> Path:
        return self.unit_dir(unit_id) / "live.json"

    def pack_log(self, unit_id: str, job_id: str) -> Path:
        """A unit's worker output when it ran in SLURM job `job_id` with others (a pack)."""
        return self.unit_dir(unit_id) / "slurm" / f"{job_id}_pack_log.out"

    def events_dir(self, kind: str, name: str, spec: UnitSpec) -> Path:
        """A unit's TensorBoard run: at its by-label path, or a trial split's name under
        `tensorboard/tune/`."""
        if kind == TRIAL:
            return self.path.joinpath(TB_DIR, "tune", *name.split("/"))
        seed = spec.config.get("seed")
        parts = label_parts(name, spec.dataset, spec.backbone, spec.strategy, spec.fold, seed)
        return self.path.joinpath(TB_DIR, *parts)

    def read_spec(self, unit_id: str) -> SpecFile:
        path = self.unit_dir(unit_id) / "spec.json"
        if not path.is_file():
            raise FerError(f"{path}: unit spec not found; re-run launch")
        return json.loads(path.read_text())

    def is_done(self, unit_id: str, kind: str | None = None) -> bool:
        """Whether the store holds the unit's result (`kind` read from its spec.json when
        not given; a unit without one is not done). Lineage aside: see run.states."""
        if kind is None:
            try:
                kind = self.read_spec(unit_id)["kind"]
            except FerError:
                return False
        return self.store.is_done(unit_id, kind)

    def reset_unit(self, unit_id: str) -> None:
        """Forget a unit's result and checkpoints, so it runs again from scratch. The `runs`
        file goes first: a crash part-way leaves the unit not done, never half-reset done."""
        for table in ("runs", "predictions", "epochs"):
            self.store.path(table, unit_id).unlink(missing_ok=True)
        shutil.rmtree(self.work_dir(unit_id), ignore_errors=True)

    def failed_path(self, unit_id: str) -> Path:
        return self.unit_dir(unit_id) / "failed.json"

    def mark_failed(
        self, unit_id: str, reason: str, rank: int = 0, group: str | None = None
    ) -> bool:
        """Record the unit's failure (`{reason, at}`); whether it was written. Rank `rank` of
        the data-parallel process group `group` (its rendezvous address) writes only where no
        lower rank of that group did: the lowest rank's reason wins, rank 0's always (its
        failure may be where the others' began). Ranks of one unit decide under a lock, as
        they fail at nearly the same moment."""
        path = self.failed_path(unit_id)
        body: dict[str, Any] = {"reason": reason, "at": time.time()}
        if group is None:
            atomic_write_text(path, json.dumps(body))
            return True
        body.update(rank=rank, group=group)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_name("failed.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                earlier = json.loads(path.read_text())
            except (OSError, ValueError):
                earlier = {}
            if earlier.get("group") == group and int(earlier.get("rank", 0)) < rank:
                return False
            atomic_write_text(path, json.dumps(body))
            return True
        finally:
            os.close(fd)  # releases the lock

    def sweep_temp(self, unit_id: str) -> None:
        """Remove what atomic writes of an earlier attempt left when it was killed between
        a temp file and its rename (`.tmp-*` in the unit's folder and work dir: live.json,
        checkpoints). One attempt of a unit runs at a time, so none of them is in progress."""
        for folder in (self.unit_dir(unit_id), self.work_dir(unit_id)):
            for path in folder.glob(f"{TEMP_PREFIX}*"):
                if path.is_file() or path.is_symlink():
                    path.unlink(missing_ok=True)

    def clear_failed(self, unit_id: str) -> None:
        self.failed_path(unit_id).unlink(missing_ok=True)

    def failure(self, unit_id: str) -> str | None:
        path = self.failed_path(unit_id)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())["reason"]
        except (json.JSONDecodeError, KeyError):
            return "failed (unreadable failed.json)"

    # --- data and caches -------------------------------------------------------------------
    def synthetic_root(self, dataset: str) -> Path:
        """A synthetic twin's raw tree (generated by its prepare unit)."""
        return self.path / "data" / dataset / "raw"

    def data_dir(self, dataset: str, prepare_id: str) -> Path:
        """What prepare unit `prepare_id` writes: index.parquet, faces.pt, faces.json."""
        return self.path / "data" / dataset / prepare_id

    def digest_cache(self) -> DigestCache:
        """The run's file digests by stat (data identity, best.pt checks): `digests.json`."""
        return DigestCache(self.path / "digests.json")

    # --- SLURM arrays and the tune search -------------------------------------------------
    def array_dir(self, key: str) -> Path:
        """One SLURM array submission: `tasks.json`, its submitit files and task logs."""
        return self.path / "arrays" / key

    def array_tasks_path(self, key: str) -> Path:
        """The unit ids of each task of array `key`, written before its sbatch."""
        return self.array_dir(key) / "tasks.json"

    @property
    def tune_dir(self) -> Path:
        return self.path / "tune"

    @property
    def tune_sbatch_path(self) -> Path:
        """`tune --cluster slurm`'s batch script (a Ray cluster inside one SLURM job)."""
        return self.tune_dir / "ray-slurm.sbatch"

    @property
    def tune_slurm_record(self) -> Path:
        """That job's id and script, for `status`/`cancel` of the search."""
        return self.tune_dir / "slurm.json"

    @property
    def ray_dir(self) -> Path:
        """The Ray backend's launcher record, cancel request and Tune experiment folders."""
        return self.path / "ray"

    @property
    def choice_path(self) -> Path:
        """The search's outcome (`tune`'s choice.json), read by the report."""
        return self.tune_dir / "choice.json"

    def trial_lock(self, config_id: str) -> Path:
        """Held while a trial of this configuration trains (two trials may draw it)."""
        return self.tune_dir / "trials" / config_id / ".lock"

    def trial_split_dir(self, config_id: str, fold: int) -> Path:
        """A trial split's `split.json`: its unit's spec and inner-val accuracy per epoch."""
        return self.tune_dir / "trials" / config_id / f"split-{fold}"

    def history_path(self, experiment: str, trial_id: str) -> Path:
        """Every (epochs_done, metric) a trial of search `experiment` reported."""
        return self.tune_dir / experiment / "history" / f"{trial_id}.jsonl"

    def invocations_path(self, experiment: str) -> Path:
        """One line per start of a trial function of search `experiment`."""
        return self.tune_dir / experiment / "invocations.jsonl"

    # --- submissions ------------------------------------------------------------------------
    @property
    def submissions_path(self) -> Path:
        return self.path / "submissions.json"

    def submissions(self) -> dict[str, Submission]:
        path = self.submissions_path
        if not path.is_file():
            return {}
        return json.loads(path.read_text())

    def record_submissions(self, records: dict[str, Submission]) -> None:
        """Merge scheduler job records (unit id -> record); attempts count up per unit, and
        a unit's earlier jobs are kept in `earlier_jobs`."""
        current = self.submissions()
        for unit_id, record in records.items():
            previous = current.get(unit_id)
            attempts = (previous.get("attempts", 0) if previous else 0) + 1
            merged: Submission = {**record, "attempts": attempts, "submitted_at": time.time()}
            if previous:
                earlier = list(previous.get("earlier_jobs", []))
                if previous["job_id"] != record["job_id"]:
                    earlier.append(
                        EarlierJob(
                            backend=previous["backend"],
                            job_id=str(previous["job_id"]),
                            submitted_at=previous.get("submitted_at"),
                        )
                    )
                if earlier:
                    merged["earlier_jobs"] = earlier
            current[unit_id] = merged
        atomic_write_text(self.submissions_path, json.dumps(current, indent=1))

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


def _first_not_in(copy: Path, original: Path) -> Path | None:
    """The first file under `copy` that `original` does not hold byte for byte at the same
    relative path; None when there is none. Links are not looked at: under `by-label/` they
    are aliases, which the launch re-points or removes, and hold no data."""
    for directory, _, files in os.walk(copy):
        for name in sorted(files):
            path = Path(directory) / name
            twin = original / path.relative_to(copy)
            if path.is_symlink():
                continue
            if twin.is_symlink() or not twin.is_file() or not filecmp.cmp(path, twin, False):
                return path
    return None


def _dag_entry(unit: Unit) -> dict[str, Any]:
    """A unit as dag.json keeps it: its fields, less `points` when it has none, so that the
    dag.json of a run without a sweep is what it was before units knew their points."""
    entry = asdict(unit)
    if not unit.points:
        del entry["points"]
    return entry
