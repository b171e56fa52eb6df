"""The tests' shared scaffolding, in one place: the small grid and the cluster profiles they
launch with, the real CLI as a subprocess, waiting for an event, the end state every
end-to-end case checks, and the SLURM pieces (job state, logs, a stand-in sbatch).

Plain functions and constants; the fixtures built from them are in tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from orchestrator.backends.slurm.control import Retry
from orchestrator.plan.profiles import SlurmProfile
from orchestrator.plan.unit import Unit
from orchestrator.run.rundir import RunDir

REPO = Path(__file__).resolve().parent.parent
SMALL_IMAGE = (160, 120)  # the session twin's frame size (real CK+: 640 x 490)
CROP = 48  # its face crops; slow enough (~1 s/epoch on a core) to catch a unit mid-run

T = TypeVar("T")


# --- a small grid ------------------------------------------------------------------------------
GRID_TEMPLATE = """
name: {name}
seed: 0
folds: {folds}
datasets:
  {dataset}:
    kind: ckplus
{source}
    crop_size: {crop}
    detector: center
    focal: {{alpha: 0.25, gamma: 0.0}}
backbones:
  tiny: {{weights: none, input_size: {crop}}}
experiments:
  - backbones: [tiny]
    strategies: {strategies}
train: {train}
"""


def small_grid(
    name: str = "small",
    folds: str = "[1]",
    strategies: str = '[ce, "ce>focal"]',
    root: Path | None = None,
    image_size: tuple[int, int] = (96, 72),
    crop: int = 32,
    dataset: str = "ckplus",
    epochs: int = 2,
    n_folds: int | None = None,
    **train: object,
) -> str:
    """The text of a small grid on CK+ (tiny CNN): the twin at `root`, or, without one, the
    synthetic twin its prepare unit writes at `image_size`. Kept as text, not dumped YAML, so
    that tests can edit it by string replacement."""
    if root is None:
        source = f"    synthetic: true\n    image_size: [{image_size[0]}, {image_size[1]}]"
    else:
        source = f"    root: {root}"
    if n_folds is not None:  # a tree of a few subjects needs fewer than the default 10
        source += f"\n    n_folds: {n_folds}"
    settings = {"epochs": epochs, "lr_step_epoch": max(1, epochs - 1), "batch_size": 32, **train}
    return GRID_TEMPLATE.format(
        name=name,
        folds=folds,
        dataset=dataset,
        source=source,
        crop=crop,
        strategies=strategies,
        train="{" + ", ".join(f"{k}: {v}" for k, v in settings.items()) + "}",
    )


SMALL_GRID = small_grid()


def study_grid(root: Path, strategies: str = "[ce]", name: str = "faults", **kwargs: Any) -> str:
    """A small grid on the twin at `root` at CROP px: one fold, units slow enough to break."""
    return small_grid(name=name, strategies=strategies, root=root, crop=CROP, **kwargs)


def roles(units: list[Unit]) -> dict[str, Unit]:
    """'prepare', 's1f1', 's2f1', ... for the units of a small grid."""
    return {("prepare" if u.kind == "prepare" else f"s{u.stage}f{u.fold}"): u for u in units}


def prepare_run(grid: Path, run: Path) -> tuple[RunDir, dict[str, Unit]]:
    """Claim `run` for `grid` and write its DAG (what launch does before submitting)."""
    from orchestrator.plan.dag import expand
    from orchestrator.plan.grid import load_grid

    loaded = load_grid(str(grid))
    units = expand(loaded, run)
    rundir = RunDir(run)
    rundir.claim(loaded.name, grid)
    rundir.write_dag(units)
    return rundir, roles(units)


# --- cluster profiles --------------------------------------------------------------------------
# `slurm` is rendered, never submitted (its partition exists on no test cluster); `test`,
# `short` and `packed` run on the one-node SLURM of scripts/local_slurm.sh (partition debug).
CLUSTER = """
local:
  backend: local
  jobs: 2
  threads_per_job: 1
ray:
  backend: ray
  address: null
  num_cpus: 2
  cpus_per_trial: 1
  gpus_per_trial: 0
  connect_timeout_s: 5
dead:
  backend: ray
  address: "127.0.0.1:1"
  connect_timeout_s: 5
slurm:
  backend: slurm
  partition: gpu
  gpus_per_job: 4
  cpus_per_job: 16
  time_min: 120
  setup: ["module load cuda/12.4"]
test:
  backend: slurm
  partition: debug
  cpus_per_job: 1
  mem_gb: 1
  time_min: 10
short:                    # USR2 asked for 90 s before the end: seen 1-60 s into a job here
  backend: slurm
  partition: debug
  cpus_per_job: 1
  mem_gb: 1
  time_min: 2
  timeout_requeues: 40    # as many runs as a slow machine needs (the count is not the point)
packed:                   # two units per job, one CPU thread each
  backend: slurm
  partition: debug
  cpus_per_job: 2
  mem_gb: 2
  time_min: 10
  units_per_job: 2
"""


# --- the real CLI ------------------------------------------------------------------------------
def cli_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **extra}


def cli(*args: Any, cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """`python -m orchestrator ARGS` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(**env),
    )


class Background:
    """`python -m orchestrator ARGS` in its own session (so its workers can be killed with it);
    output goes to files, never to a pipe that could fill up."""

    def __init__(self, *args: Any, cwd: Path, name: str = "bg"):
        self.out_path = cwd / f"{name}.out"
        self.err_path = cwd / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", *map(str, args)],
                cwd=cwd,
                stdout=out,
                stderr=err,
                env=cli_env(),
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            pytest.fail(f"launch did not finish within {timeout:.0f}s:\n{self.output()}")

    def output(self) -> str:
        return self.out_path.read_text(errors="replace") + self.err_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def kill_group(self) -> None:
        """SIGKILL the launcher and every worker it started (they share its session)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)


# --- waiting for an event ----------------------------------------------------------------------
def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.1,
    explain: Callable[[], str] | None = None,
) -> T:
    """Poll `predicate` until it is truthy (its value is returned); fail after `timeout`
    seconds naming `what`, with `explain()` appended (logs that say why)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(
        f"timed out after {timeout:.0f}s waiting for {what}" + (explain() if explain else "")
    )


def epochs_done(rundir: RunDir, unit_id: str) -> int:
    """Epochs the unit's trainer reported done (progress.json), 0 before the first."""
    try:
        return int(json.loads((rundir.work_dir(unit_id) / "progress.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def wait_mid_training(
    rundir: RunDir,
    unit_id: str,
    at_least: int,
    before: int,
    timeout: float,
    explain: Callable[[], str] | None = None,
) -> int:
    """Wait until the unit has done `at_least` epochs but fewer than `before` (it is still
    training: the moment to break it); the epochs done then."""

    def mid_training() -> int:
        done = epochs_done(rundir, unit_id)
        return done if at_least <= done < before else 0

    return wait_until(
        mid_training,
        timeout,
        f"epoch {at_least} of unit {unit_id}",
        interval=0.05,
        explain=explain,
    )


def launched_roles(run: Path, launcher: Background, timeout: float = 120) -> dict[str, Unit]:
    """The roles of a background launch's units, once it has written its DAG."""
    wait_until(lambda: (run / "dag.json").is_file(), timeout, "the DAG", explain=launcher.output)
    return roles(RunDir(run).read_dag())


def alive(pid: int) -> bool:
    """A live, non-zombie process (PID 1 here reaps slowly)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def ray_running() -> bool:
    """Whether this process is connected to a Ray (without importing Ray to find out)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


# --- the end state every end-to-end case checks ------------------------------------------------
def assert_grid_done_once(rundir: RunDir, epochs: int | dict[str, int]) -> dict[str, dict]:
    """Every unit of the run's DAG is done exactly once: one prepare row per data unit, one
    runs row per training, its epochs 1..E once each, one prediction per test image.
    Returns the runs rows by unit id."""
    units = rundir.read_dag()
    train = [u for u in units if u.kind == "train"]
    prepare = rundir.store.read("prepare")
    assert prepare is not None
    assert sorted(prepare.column("unit_id").to_pylist()) == sorted(
        u.id for u in units if u.kind == "prepare"
    )
    runs = rundir.store.read("runs").to_pylist()
    assert sorted(r["unit_id"] for r in runs) == sorted(u.id for u in train), "runs rows"
    by_unit = {r["unit_id"]: r for r in runs}
    for unit in train:
        want = epochs if isinstance(epochs, int) else epochs[unit.id]
        rows = rundir.store.read("epochs", {unit.id}).to_pylist()
        assert [r["epoch"] for r in rows] == list(range(1, want + 1)), unit.name
        predictions = rundir.store.read("predictions", {unit.id})
        assert predictions is not None and predictions.num_rows == by_unit[unit.id]["n_test"]
        assert len(set(predictions.column("image_id").to_pylist())) == predictions.num_rows
    return by_unit


def private_copy(rundir: RunDir, folder: Path) -> RunDir:
    """A copy of a shared (module- or session-scoped) run dir that one test may change,
    re-launch or break: the shared one stays as it was, whatever order the tests run in."""
    return RunDir(Path(shutil.copytree(rundir.path, folder / rundir.path.name, symlinks=True)))


def temp_files(folder: Path) -> list[Path]:
    """Leftover temp files of unfinished atomic writes under `folder`."""
    return sorted(folder.rglob(".tmp-*"))


# --- a tiny CK+ tree on disk (for data identity and lineage tests) -----------------------------
def tiny_ckplus(root: Path, subjects: int = 6, size: int = 40) -> Path:
    """A CK+-layout tree: `subjects` subjects, one labelled 3-frame sequence each (labels
    cycle through the classes), noise images of `size` px; quick to index, crop and train."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for s in range(1, subjects + 1):
        sequence = root / f"cohn-kanade-images/S{s:03d}/001"
        sequence.mkdir(parents=True, exist_ok=True)
        for f in (1, 2, 3):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(sequence / f"S{s:03d}_001_{f:08d}.png")
        emotion = root / f"Emotion/S{s:03d}/001/S{s:03d}_001_00000003_emotion.txt"
        emotion.parent.mkdir(parents=True, exist_ok=True)
        emotion.write_text(f"   {s % 7 + 1}.0000000e+00\n")
    return root


# --- SLURM -------------------------------------------------------------------------------------
# The SLURM tests hold the whole node, requeue jobs, change the user's MaxSubmitJobs and restart
# slurmd: they may run only against the one-node cluster of scripts/local_slurm.sh, and only
# when asked to (.ci/run sets SLURM_OPT_IN). Whatever else answers as `sbatch` is left alone.
SLURM_OPT_IN = "FER_TEST_SLURM"
LOCAL_SLURM_CLUSTER = os.environ.get("FER_SLURM_CLUSTER", "fer")  # as scripts/local_slurm.sh
LOCAL_SLURM_MARKER = "# Written by scripts/local_slurm.sh"  # its slurm.conf's first line


def slurm_gate() -> str | None:
    """Why the `slurm`-marked tests must be skipped here, or None where they may run: the
    opt-in is set, and the cluster that `scontrol` answers for is named as local_slurm.sh
    names it and runs on a slurm.conf that the script wrote (a real cluster named `fer`
    fails the second check)."""
    up = "start it with `sudo scripts/local_slurm.sh up`"
    if os.environ.get(SLURM_OPT_IN) != "1":
        return (
            f"SLURM tests run only with {SLURM_OPT_IN}=1 (.ci/run sets it), against the "
            "one-node cluster of scripts/local_slurm.sh"
        )
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return f"no sbatch/scontrol on PATH: {up}"
    try:
        shown = subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"scontrol show config: {exc}; {up}"
    if shown.returncode != 0:
        return f"scontrol show config failed ({shown.stderr.strip()[:200]}); {up}"
    config = dict(
        (key.strip(), value.strip())
        for key, sep, value in (line.partition("=") for line in shown.stdout.splitlines())
        if sep
    )
    name = config.get("ClusterName")
    if name != LOCAL_SLURM_CLUSTER:
        return (
            f"scontrol reports cluster {name!r}, not {LOCAL_SLURM_CLUSTER!r} of "
            "scripts/local_slurm.sh: the SLURM tests never submit to another cluster"
        )
    conf = Path(config.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
    try:
        first = conf.read_text().splitlines()[:1]
    except OSError as exc:
        return f"cannot read the cluster's {conf} ({exc}) to check who wrote it"
    if not first or not first[0].startswith(LOCAL_SLURM_MARKER):
        return (
            f"cluster {name!r} runs on {conf}, which scripts/local_slurm.sh did not write: "
            "the SLURM tests never submit to another cluster"
        )
    return None


# slurmd refuses a job whose credential is not newer (in whole seconds) than the revocation
# at its requeue ("Job credential revoked": the job fails), so a release waits this long.
RETRY = Retry.of(SlurmProfile())  # a test's own controller calls retry as a default profile's
REQUEUE_GAP_S = 1.5


def scontrol_job(job: str) -> str:
    """`scontrol show job JOB` ('' once the controller has forgotten it)."""
    return subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout


def _release_if_held(job: str) -> None:
    """A requeued job waits ~120 s (BeginTime) before it may start again: start it now, but
    not within the second of its requeue (REQUEUE_GAP_S: a clock rule of slurmd, not an
    event to wait for)."""
    info = scontrol_job(job)
    if "JobState=PENDING" in info and "Reason=BeginTime" in info:
        time.sleep(REQUEUE_GAP_S)
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=False)


def slurm_finished(backend: Any, rundir: RunDir) -> bool:
    """Every recorded job of the run dir has ended (SLURM knows each, none is active)."""
    from orchestrator.run.states import ACTIVE

    states = backend.states(rundir)
    return len(states) == len(rundir.submissions()) and not any(
        s in ACTIVE for s in states.values()
    )


def wait_requeued_to_end(backend: Any, rundir: RunDir, job: str, timeout: float, what: str):
    """Wait until every job of the run dir has ended, starting the requeued `job` at once
    each time SLURM holds it back."""
    wait_until(
        lambda: _release_if_held(job) or slurm_finished(backend, rundir),
        timeout,
        what,
        interval=1,
        explain=job_logs(rundir),
    )


def job_logs(rundir: RunDir) -> Callable[[], str]:
    """For wait_until's `explain`: the tail of every job log of the run dir."""

    def tail() -> str:
        parts = []
        for log in sorted(rundir.path.glob("arrays/*/*_log.out")):
            last = log.read_text(errors="replace").splitlines()[-8:]
            parts.append(f"\n--- {log.relative_to(rundir.path)}\n" + "\n".join(last))
        return "".join(parts)

    return tail


@contextlib.contextmanager
def node_held(folder: Path) -> Iterator[str]:
    """Someone else's job holds the whole node (running) meanwhile, so every job of ours
    stays pending; cancelled afterwards, pass or fail. Yields its job id."""
    other = subprocess.run(
        ["sbatch", "--parsable", "-p", "debug", "--exclusive", "--mem=100M", "-J", "not-ours",
         "-o", str(folder / "not-ours.out"), "--wrap", "sleep 600"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    try:
        wait_until(lambda: "JobState=RUNNING" in scontrol_job(other), 60, "the node to be held")
        yield other
    finally:
        subprocess.run(["scancel", other], check=False)


def fake_slurm_tools(monkeypatch: pytest.MonkeyPatch, folder: Path) -> Path:
    """sbatch/srun stand-ins on PATH: sbatch accepts every script as job 4242 and appends its
    arguments to the returned file (absent until sbatch is called); nothing runs."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    calls = folder / "sbatch.calls"
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\necho "$@" >> {calls}\necho "Submitted batch job 4242"\n'
    )
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 99\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


def sbatch_script(executor: Any, tasks: int = 1) -> str:
    """The sbatch script submitit hands to sbatch for an array of `tasks` from `executor`
    (under fake_slurm_tools): submitted for real, read back from the job's submission file."""
    with executor.batch():
        jobs = [executor.submit(int) for _ in range(tasks)]
    return jobs[0].paths.submission_file.read_text()
