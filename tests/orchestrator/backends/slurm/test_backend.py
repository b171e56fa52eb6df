"""The slurm backend: sbatch text (golden file), and on a real one-node SLURM the afterok
chain, failure -> blocked -> retry of only that chain, resume after scancel, requeue on
preemption, and a cancel that touches only this run's jobs.

The cluster tests (marked `slurm`) need `scripts/local_slurm.sh up` (partition `debug`,
accounting on) and FER_TEST_SLURM=1; elsewhere they are skipped (tests.helpers.slurm_gate).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from fer_core.errors import FerError
from orchestrator.backends.ray.cluster import render_ray_sbatch
from orchestrator.backends.slurm.arrays import dependency_of, plan_arrays
from orchestrator.backends.slurm.backend import SlurmBackend, job_name, job_parameters
from orchestrator.backends.slurm.jobs import (
    STATE_MAP,
    normalise_state,
    raw_states,
    run_tag,
    tagged_jobs,
)
from orchestrator.backends.slurm.pack import plan_packs
from orchestrator.plan.dag import expand
from orchestrator.plan.grid import load_grid
from orchestrator.plan.profiles import DEFAULT_FILE, RayProfile, SlurmProfile, load_profile
from orchestrator.plan.unit import Unit
from orchestrator.run.launch import launch
from orchestrator.run.rundir import RunDir
from orchestrator.run.states import ACTIVE, State
from orchestrator.run.status import status_rows
from tests.helpers import (
    CLUSTER,
    REPO,
    RETRY,
    cli,
    fake_slurm_tools,
    job_logs,
    node_held,
    prepare_run,
    roles,
    sbatch_script,
    scontrol_job,
    slurm_finished,
    small_grid,
    wait_mid_training,
    wait_requeued_to_end,
    wait_until,
)

GOLDEN = Path(__file__).parent / "golden" / "sbatch_slurm_profile.txt"


def write_study(
    tmp: Path, name: str, folds: str = "[1]", epochs: int = 2, crop: int = 32, **grid
) -> Path:
    """A grid file on the synthetic CK+ twin: generated inside the prepare job, or at `root`."""
    path = tmp / f"{name}.yaml"
    path.write_text(
        small_grid(name=name, folds=folds, epochs=epochs, crop=crop, image_size=(64, 48), **grid)
    )
    return path


def units_by_role(grid: Path, run: Path) -> dict[str, Unit]:
    return roles(expand(load_grid(str(grid)), run))


def job_id(rundir: RunDir, unit: Unit) -> str:
    return str(rundir.submissions()[unit.id]["job_id"])


@pytest.fixture
def cleanup(cluster_file):
    """Cancel whatever the test's run dirs still have queued, pass or fail."""
    rundirs: list[RunDir] = []
    yield rundirs.append
    for rundir in rundirs:
        with contextlib.suppress(Exception):  # the cluster may be the thing that broke
            SlurmBackend(load_profile("test", cluster_file)).cancel(rundir)


# --- no cluster needed --------------------------------------------------------------------
def test_without_sbatch_the_backend_refuses_before_submitting(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FerError, match="--cluster slurm: no sbatch on PATH"):
        SlurmBackend(SlurmProfile(partition="debug"))


def test_every_slurm_state_maps_to_a_backend_state():
    assert set(STATE_MAP.values()) <= {
        State.PENDING,
        State.RUNNING,
        State.FAILED,
        State.CANCELLED,
        State.COMPLETED,
    }
    assert normalise_state("CANCELLED by 0") == State.CANCELLED
    assert normalise_state("REQUEUED") == State.PENDING
    assert normalise_state("COMPLETING") == State.RUNNING
    for failed in ("FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL"):
        assert normalise_state(failed) == State.FAILED
    assert normalise_state("COMPLETED") == State.COMPLETED


def _normalised(text: str, rundir: RunDir) -> str:
    text = text.replace(str(rundir.path), "RUN_DIR").replace(run_tag(rundir.path), "RUN_TAG")
    return text.replace(sys.executable, "PYTHON")


def test_sbatch_text_of_the_slurm_profile_matches_the_golden_file(monkeypatch, tmp_path):
    fake_slurm_tools(monkeypatch, tmp_path)
    profile = load_profile("slurm", DEFAULT_FILE)
    assert isinstance(profile, SlurmProfile)
    # cluster.yaml ships no setup lines nor site flags; show where they go (each value quoted)
    flags = {"constraint": "a100|h100", "mail-type": "FAIL", "mail-user": "me@lab.org"}
    backend = SlurmBackend(replace(profile, setup=("module load cuda/12.4",), extra_sbatch=flags))
    rundir = RunDir(tmp_path / "run")
    unit = Unit(
        id="0123456789abcdef",
        kind="train",
        name="ckplus/f03/inception_v3/ce>focal",
        dataset="ckplus",
        deps=("fedcba9876543210",),
        spec={},
        stage=2,
        fold=3,
    )
    sibling = Unit(
        id="00000000000000ff",
        kind="train",
        name="ckplus/f04/inception_v3/ce>focal",
        dataset="ckplus",
        deps=("ff00000000000000",),
        spec={},
    )
    executor = backend.executor(rundir, [(unit,), (sibling,)], "aftercorr:4242", "KEY")
    text = _normalised(sbatch_script(executor, 2), rundir)
    if os.environ.get("FER_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "sbatch text changed; FER_UPDATE_GOLDEN=1 rewrites it"


def test_profile_values_reach_sbatch_only_as_quoted_parameters(monkeypatch, tmp_path):
    fake_slurm_tools(monkeypatch, tmp_path)
    backend = SlurmBackend(
        SlurmProfile(
            partition="debug",
            mem_gb=1.5,
            gpus_per_job=0,
            env={"FER_SECRET_LOOKING": "$(touch /tmp/pwned)"},
        )
    )
    rundir = RunDir(tmp_path / "run")
    unit = Unit(
        id="abc",
        kind="train",
        name="my set/f01/tiny/ce>focal; rm -rf ~",
        dataset="x",
        deps=(),
        spec={},
    )
    text = sbatch_script(backend.executor(rundir, [(unit,)], "", "KEY"))
    assert "--job-name=fer-my_set_f01_tiny_ce_focal_rm_-rf" in text
    assert job_name(unit) == "fer-my_set_f01_tiny_ce_focal_rm_-rf"
    assert "--mem=1536MB" in text and "gpus" not in text and "dependency" not in text
    assert "pwned" not in text  # env is set inside the job's Python, never in the script
    assert backend.job_env((unit,))["FER_SECRET_LOOKING"] == "$(touch /tmp/pwned)"
    assert backend.job_env((unit,))["OMP_NUM_THREADS"] == "1"


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        ("{dependency: 'afterany:1'}", "sets --dependency, which the tool sets itself"),
        ("{comment: x}", "sets --comment, which the tool sets itself"),
        ("{array: 0-3}", "sets --array, which the tool sets itself"),
        ("{kill_on_invalid_dep: 'no'}", "sets --kill-on-invalid-dep, which the tool sets"),
        ("{'--gres': 'gpu:1'}", "an option is a long sbatch name without '--'"),
        ('{mail-type: "FAIL\\nrm -rf ~"}', "a control character"),
        ("[gres]", "must be a mapping of sbatch options to values"),
    ],
)
def test_extra_sbatch_refuses_the_tools_own_options_and_line_breaks(tmp_path, flags, problem):
    path = tmp_path / "cluster.yaml"
    path.write_text(f"site: {{backend: slurm, extra_sbatch: {flags}}}\n")
    with pytest.raises(
        FerError, match=rf"cluster.yaml: site\.extra_sbatch: .*{re.escape(problem)}"
    ):
        load_profile("site", path)


def test_a_container_command_is_the_jobs_interpreter_and_site_flags_reach_the_ray_job(
    monkeypatch, tmp_path
):
    fake_slurm_tools(monkeypatch, tmp_path)
    profile = SlurmProfile(
        python="apptainer exec --nv '/images/fer 1.sif' python",
        setup=("module load apptainer",),
        extra_sbatch={"constraint": "a100|h100"},
    )
    unit = Unit(id="abc", kind="train", name="x/f01/tiny/ce", dataset="x", deps=(), spec={})
    text = sbatch_script(
        SlurmBackend(profile).executor(RunDir(tmp_path / "run"), [(unit,)], "", "K")
    )
    setup, command = text.index("module load apptainer"), text.index("srun --unbuffered")
    assert setup < command
    assert "apptainer exec --nv '/images/fer 1.sif' python -u -m submitit" in text[command:]
    ray = render_ray_sbatch("fer-ray-x", "/x", ["tune"], profile, RayProfile(), nodes=1)
    assert "#SBATCH --constraint='a100|h100'\n" in ray
    path = tmp_path / "cluster.yaml"
    path.write_text('site: {backend: slurm, python: "apptainer exec \'unclosed"}\n')
    with pytest.raises(FerError, match=r"site\.python: .* must be a command a shell can split"):
        load_profile("site", path)
    assert "apptainer exec --nv '/images/fer 1.sif' python -m orchestrator tune" in ray


def test_resources_per_unit_kind_and_backbone_reach_their_jobs(monkeypatch, tmp_path):
    """`resources:` of a profile: the preparation job asks for no GPU and an hour, an
    inception_v3 job for its own memory and time, others the defaults; bad entries are one
    line naming them."""
    fake_slurm_tools(monkeypatch, tmp_path)
    path = tmp_path / "cluster.yaml"
    path.write_text(
        "site: {backend: slurm, gpus_per_job: 1, cpus_per_job: 4, mem_gb: 16, time_min: 240,\n"
        "  resources: {prepare: {gpus: 0, cpus: 8, time_min: 60},\n"
        "              inception_v3: {mem_gb: 32, time_min: 480}}}\n"
    )
    profile = load_profile("site", path)
    assert isinstance(profile, SlurmProfile)
    backend = SlurmBackend(profile)
    rundir = RunDir(tmp_path / "run")
    prepare = Unit(
        id="p", kind="prepare", name="ckplus/prepare", dataset="ckplus", deps=(), spec={}
    )
    inception, tiny = (
        Unit(id=b, kind="train", name=f"ckplus/f01/{b}/ce", dataset="ckplus", deps=("p",),
             spec={}, backbone=b)
        for b in ("inception_v3", "tiny")
    )  # fmt: skip
    text = sbatch_script(backend.executor(rundir, [(prepare,)], "", "KEY"))
    assert "--cpus-per-task=8\n" in text and "--time=60\n" in text and "gpus" not in text
    assert "--mem=16GB\n" in text
    assert backend.job_env((prepare,))["OMP_NUM_THREADS"] == "8"
    text = sbatch_script(backend.executor(rundir, [(inception,)], "afterok:1", "KEY"))
    assert "--mem=32GB\n" in text and "--time=480\n" in text and "--gpus-per-node=1\n" in text
    text = sbatch_script(backend.executor(rundir, [(tiny,)], "afterok:1", "KEY"))
    assert "--mem=16GB\n" in text and "--time=240\n" in text and "--cpus-per-task=4\n" in text
    # tasks of different needs never share an array
    packs = plan_packs([prepare, inception, tiny], 1, {})
    arrays = plan_arrays(packs, None, lambda pack: profile.resources_for(pack.units))
    assert [[p.units[0].id for p in a.packs] for a in arrays] == [["p"], ["inception_v3"], ["tiny"]]
    for body, problem in (
        ("{vgg: {gpus: 1}}", "to resources; 'vgg' is neither"),
        ("{prepare: {gpu: 0}}", "prepare.gpu: unknown"),
        ("{prepare: {time_min: 0}}", "prepare.time_min: 0, which must be an integer >= 1"),
    ):
        path.write_text(f"site: {{backend: slurm, resources: {body}}}\n")
        with pytest.raises(FerError, match=rf"site\.resources: .*{re.escape(problem)}"):
            load_profile("site", path)


def test_a_timm_backbone_has_resources_of_its_own(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(
        "site: {backend: slurm, mem_gb: 16, resources: {timm:convnext_tiny: {mem_gb: 40}}}\n"
    )
    profile = load_profile("site", path)
    assert isinstance(profile, SlurmProfile)
    unit = Unit(id="c", kind="train", name="ckplus/f01/timm:convnext_tiny/ce", dataset="ckplus",
                deps=(), spec={}, backbone="timm:convnext_tiny")  # fmt: skip
    assert profile.resources_for((unit,)).mem_gb == 40


def test_units_and_the_tune_allocation_take_the_same_slurm_defaults(tmp_path):
    """A slurm profile that sets nothing: the units' arrays and the Ray allocation of `tune
    --cluster slurm` ask for the same time and CPUs (one default per key), and an array is not
    throttled."""
    profile = SlurmProfile()
    unit = Unit(id="abc", kind="train", name="x/f01/tiny/ce", dataset="x", deps=(), spec={})
    params = job_parameters(profile, RunDir(tmp_path / "run"), [(unit,), (unit,)], "", "KEY")
    text = render_ray_sbatch("fer-ray-x", "/x", ["tune"], profile, RayProfile(), nodes=1)
    assert params["time"] == 60 and f"#SBATCH --time={params['time']}\n" in text
    assert f"#SBATCH --cpus-per-task={params['cpus_per_task']}\n" in text
    assert params["array_parallelism"] == 2  # all tasks of the array at once
    assert "connect_timeout_s: 30.0\n" in text  # the ray profile's default


# --- a real one-node SLURM --------------------------------------------------------------
@pytest.mark.slurm
def test_chain_runs_with_afterok_a_failure_blocks_and_relaunch_retries_that_chain(
    tmp_path, cleanup, twin_root, cluster_file
):
    grid = write_study(tmp_path, "slurmchain", folds="[1, 2]", root=twin_root)
    run = tmp_path / "run"
    roles = units_by_role(grid, run)
    # A real failure for fold 2's stage 1: its work dir is a file, so training cannot start.
    broken = RunDir(run).work_dir(roles["s1f2"].id)
    broken.parent.mkdir(parents=True)
    broken.write_text("not a directory")

    cleanup(RunDir(run))
    rundir = launch(str(grid), cluster="test", cluster_file=cluster_file, run_dir=run)
    backend = SlurmBackend(load_profile("test", cluster_file))
    assert len(rundir.submissions()) == 5
    # Three sbatch calls: prepare; both stage-1 units as one array after it; both stage-2
    # units as one array whose task i waits on task i of the stage-1 array.
    prepare, stage1 = job_id(rundir, roles["prepare"]), job_id(rundir, roles["s1f1"])
    array1 = stage1.partition("_")[0]
    assert {job_id(rundir, roles[r]) for r in ("s1f1", "s1f2")} == {f"{array1}_0", f"{array1}_1"}
    assert "Dependency=(null)" in scontrol_job(prepare)
    info = scontrol_job(stage1)
    assert f"Dependency=afterok:{prepare}" in info and "KillOInInvalidDependent=Yes" in info
    for stage2, parent in (("s2f1", "s1f1"), ("s2f2", "s1f2")):
        child = job_id(rundir, roles[stage2])
        assert child.partition("_")[2] == job_id(rundir, roles[parent]).partition("_")[2]
        info = scontrol_job(child)
        assert f"Dependency=aftercorr:{array1}" in info and "KillOInInvalidDependent=Yes" in info

    wait_until(
        lambda: slurm_finished(backend, rundir), 240, "the first launch", 0.5, job_logs(rundir)
    )
    rows = {row["unit_id"]: row for row in status_rows(rundir, backend)}
    assert rows[roles["s1f1"].id]["state"] == "done"
    assert rows[roles["s2f1"].id]["state"] == "done"
    assert rows[roles["s1f2"].id]["state"] == "failed"
    assert "work" in rows[roles["s1f2"].id]["detail"]
    assert rows[roles["s2f2"].id]["state"] == "blocked"
    assert backend.states(rundir)[roles["s2f2"].id] == State.CANCELLED
    prepare_log = next(run.glob(f"arrays/*/{prepare}_0_log.out"))
    assert prepare_log.stat().st_size > 0

    broken.unlink()  # the fix; this time launch waits (bounded here by a thread join)
    out = io.StringIO()
    errors: list[BaseException] = []

    def launch_and_wait() -> None:
        try:
            launch(
                str(grid),
                cluster="test",
                cluster_file=cluster_file,
                run_dir=run,
                wait=True,
                out=out,
            )
        except BaseException as exc:  # surfaced in the test below
            errors.append(exc)

    with contextlib.redirect_stdout(out):
        waiter = threading.Thread(target=launch_and_wait)
        waiter.start()
        waiter.join(240)
    assert not waiter.is_alive(), "launch --wait did not return" + job_logs(rundir)()
    assert not errors, errors
    attempts = {u: r["attempts"] for u, r in rundir.submissions().items()}
    retried = {u for u, n in attempts.items() if n == 2}
    assert retried == {roles["s1f2"].id, roles["s2f2"].id}
    assert all(n == 1 for u, n in attempts.items() if u not in retried)
    lines = out.getvalue().splitlines()
    assert any(re.match(r"\[1/2\] .* done +ckplus/f02/tiny/ce ", line) for line in lines), lines
    assert any(re.match(r"\[2/2\] .* done +ckplus/f02/tiny/ce>focal", line) for line in lines)
    assert {r["state"] for r in status_rows(rundir, backend)} == {"done"}
    runs = rundir.store.read("runs").to_pylist()
    assert len(runs) == 4 and {r["scheduler"] for r in runs} == {"slurm"}
    by_unit = {r["unit_id"]: r for r in runs}
    assert by_unit[roles["s1f2"].id]["job_id"] == job_id(rundir, roles["s1f2"])


@pytest.mark.slurm
def test_scancel_then_relaunch_resumes_and_preemption_requeues(
    tmp_path, cleanup, twin_root, cluster_file
):
    # The session's twin (shared with other tests); 48 px crops make epochs of a second or
    # more, so a unit can be caught between epoch 2 and its last (6).
    grid = write_study(tmp_path, "slurmresume", epochs=6, crop=48, root=twin_root)
    run = tmp_path / "run"
    roles = units_by_role(grid, run)
    cleanup(RunDir(run))
    rundir = launch(str(grid), cluster="test", cluster_file=cluster_file, run_dir=run)
    backend = SlurmBackend(load_profile("test", cluster_file))
    stage1, stage2 = roles["s1f1"], roles["s2f1"]

    # scancel stage 1 mid-run: its worker stops at once (not after KillWait), stage 2 is
    # cancelled with it (kill-on-invalid-dep), and a re-launch resumes stage 1.
    wait_mid_training(rundir, stage1.id, 2, 6, 150, job_logs(rundir))
    subprocess.run(["scancel", job_id(rundir, stage1)], check=True)
    wait_until(lambda: slurm_finished(backend, rundir), 30, "the scancel", 0.5, job_logs(rundir))
    assert backend.states(rundir) == {
        roles["prepare"].id: State.COMPLETED,
        stage1.id: State.CANCELLED,
        stage2.id: State.CANCELLED,
    }
    states = {r["unit_id"]: r["state"] for r in status_rows(rundir, backend)}
    assert (states[stage1.id], states[stage2.id]) == ("todo", "blocked")
    launch(str(grid), cluster="test", cluster_file=cluster_file, run_dir=run)
    assert [rundir.submissions()[u.id]["attempts"] for u in (stage1, stage2)] == [2, 2]

    # Preempt stage 2 (USR2, as SLURM signals before a time limit): submitit checkpoints and
    # requeues the same job id. SLURM holds a requeued job for 120 s; release it sooner.
    wait_mid_training(rundir, stage2.id, 2, 6, 150, job_logs(rundir))
    job = job_id(rundir, stage2)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    wait_until(lambda: "Restarts=1" in scontrol_job(job), 60, "the requeue", 0.5, job_logs(rundir))
    wait_requeued_to_end(backend, rundir, job, 150, "the requeued stage 2")

    runs = {r["unit_id"]: r for r in rundir.store.read("runs").to_pylist()}
    assert runs[stage1.id]["resumed_from_epoch"] >= 2
    assert runs[stage2.id]["resumed_from_epoch"] >= 2
    assert runs[stage2.id]["requeues"] == 1 and runs[stage2.id]["job_id"] == job
    assert [e["epoch"] for e in rundir.store.read("epochs", {stage1.id}).to_pylist()] == list(
        range(1, 7)
    )


@pytest.mark.slurm
def test_a_partition_sbatch_refuses_is_one_clear_error_and_nothing_recorded(tmp_path):
    grid = write_study(tmp_path, "slurmrefused")
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(CLUSTER.replace("partition: debug", "partition: no-such-partition"))
    with pytest.raises(FerError, match=r"sbatch refused fer-ckplus_prepare .*partition"):
        launch(str(grid), cluster="test", cluster_file=cluster, run_dir=tmp_path / "run")
    assert RunDir(tmp_path / "run").submissions() == {}


@pytest.mark.slurm
def test_relaunch_after_a_partial_launch_and_cancel_touch_only_this_run(
    tmp_path, cleanup, cluster_file
):
    # Someone else's job holds the whole node, so every job of ours stays pending meanwhile.
    with node_held(tmp_path) as other:
        grid = write_study(tmp_path, "slurmcancel")
        run = tmp_path / "run"
        # A launch killed after two of its three sbatch calls: the record says exactly that.
        rundir, _ = prepare_run(grid, run)
        cleanup(rundir)
        units = rundir.read_dag()
        SlurmBackend(load_profile("test", cluster_file)).submit(rundir, units[:2], wait=False)
        assert set(rundir.submissions()) == {units[0].id, units[1].id}

        args = ("--grid", grid, "--cluster", "test", "--cluster-file", cluster_file)
        launched = cli("launch", *args, "--run-dir", run, cwd=REPO, timeout=120)
        assert launched.returncode == 0, launched.stderr
        assert "submitting 1 units" in launched.stdout and "(0 done, 2 active)" in launched.stdout
        records = rundir.submissions()
        assert [records[u.id]["attempts"] for u in units] == [1, 1, 1]
        stage2 = scontrol_job(str(records[units[2].id]["job_id"]))
        assert f"Dependency=afterok:{records[units[1].id]['job_id']}" in stage2

        ours = [str(records[u.id]["job_id"]) for u in units]
        cancelled = cli("cancel", "--run-dir", run, cwd=REPO, timeout=120)
        assert cancelled.returncode == 0, cancelled.stderr
        assert "cancelled 3 units" in cancelled.stdout
        wait_until(
            lambda: (
                [normalise_state(raw_states(ours, None, RETRY).get(j, "")) for j in ours]
                == [State.CANCELLED] * 3
            ),
            60,
            "this run's jobs to be cancelled",
        )
        assert normalise_state(raw_states([other], None, RETRY)[other]) == State.RUNNING
        again = cli("cancel", "--run-dir", run, cwd=REPO, timeout=120)
        assert "cancelled 0 units" in again.stdout


class _Killed(Exception):
    """Stands for a SIGKILL of the launcher right after an sbatch, before its record."""


@pytest.mark.slurm
def test_cancel_finds_a_job_a_killed_launch_did_not_record_and_only_in_its_run_dir(
    tmp_path, cleanup, monkeypatch, cluster_file
):
    grid = write_study(tmp_path, "slurmorphan")
    backend = SlurmBackend(load_profile("test", cluster_file))
    runs: list[RunDir] = []
    for name in ("run-a", "run-b"):  # one grid, so the same unit ids, in two run dirs
        rundir, _ = prepare_run(grid, tmp_path / name)
        cleanup(rundir)
        units = rundir.read_dag()
        with monkeypatch.context() as patch:
            patch.setattr(RunDir, "record_submissions", _raise_killed)
            with pytest.raises(_Killed):
                backend.submit(rundir, units[:1], wait=False)
        assert rundir.submissions() == {}
        runs.append(rundir)
    jobs = [list(tagged_jobs(rundir.path, RETRY)) for rundir in runs]
    assert len(jobs[0]) == len(jobs[1]) == 1 and jobs[0] != jobs[1]
    try:
        assert backend.cancel(runs[0]) == [units[0].id]
        wait_until(
            lambda: (
                normalise_state(raw_states(jobs[0], None, RETRY).get(jobs[0][0], ""))
                == State.CANCELLED
            ),
            60,
            "the unrecorded job to be cancelled",
        )
        assert normalise_state(raw_states(jobs[1], None, RETRY)[jobs[1][0]]) in ACTIVE
    finally:
        assert backend.cancel(runs[1]) == [units[0].id]


def _raise_killed(self, records):
    raise _Killed(records)


def test_a_dependency_neither_done_nor_queued_is_refused_before_any_sbatch(monkeypatch, tmp_path):
    sbatch_calls = fake_slurm_tools(monkeypatch, tmp_path)
    rundir, _ = prepare_run(write_study(tmp_path, "orphan"), tmp_path / "run")
    units = rundir.read_dag()
    with pytest.raises(FerError, match=f"unit {units[0].id} is needed by this submission"):
        SlurmBackend(SlurmProfile(partition="debug")).submit(rundir, units[1:], wait=False)
    assert rundir.submissions() == {} and not sbatch_calls.exists()


def test_job_name_is_safe_for_any_unit_name():
    unit = Unit(id="x", kind="prepare", name="ckplus/prepare", dataset="ckplus", deps=(), spec={})
    assert job_name(unit) == "fer-ckplus_prepare"
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", job_name(unit))


# --- packing (units_per_job), no cluster needed --------------------------------------------
def _chain(n_folds: int) -> list[Unit]:
    """prepare -> stage 1 per fold -> stage 2 per fold, in topological order."""
    units = [Unit(id="p", kind="prepare", name="d/prepare", dataset="d", deps=(), spec={})]
    for stage, parent in ((1, "p"), (2, "a")):
        for fold in range(1, n_folds + 1):
            deps = ("p",) if parent == "p" else (f"a{fold}",)
            name = "ab"[stage - 1] + str(fold)
            units.append(Unit(id=name, kind="train", name=name, dataset="d", deps=deps, spec={}))
    return units


def _plan(units: list[Unit], per_job: int, known: dict[str, str] | None = None):
    return [
        ([u.id for u in pack.units], list(pack.parents), list(pack.external))
        for pack in plan_packs(units, per_job, known or {})
    ]


def test_packs_keep_the_children_of_one_pack_together_and_never_a_unit_with_its_parent():
    assert _plan(_chain(4), 2) == [
        (["p"], [], []),
        (["a1", "a2"], [0], []),
        (["a3", "a4"], [0], []),
        (["b1", "b2"], [1], []),
        (["b3", "b4"], [2], []),
    ]
    # Leftovers of groups that wait on different packs share a pack that waits on both.
    assert _plan(_chain(3)[1:], 2, {"p": "41"}) == [
        (["a1", "a2"], [], ["41"]),
        (["a3"], [], ["41"]),
        (["b1", "b2"], [0], []),
        (["b3"], [1], []),
    ]
    assert _plan(_chain(3)[4:], 2, {"a1": "7", "a2": "7", "a3": "9"}) == [
        (["b1", "b2"], [], ["7"]),
        (["b3"], [], ["9"]),
    ]
    mixed = _chain(3)[1:4] + [_chain(3)[4], _chain(3)[6]]  # b1 and b3: different parent packs
    assert _plan(mixed, 2, {"p": "41"})[-1] == (["b1", "b3"], [0, 1], [])


def test_one_unit_per_job_keeps_the_submission_order():
    units = _chain(2)
    assert _plan(units, 1) == [
        (["p"], [], []),
        (["a1"], [0], []),
        (["a2"], [0], []),
        (["b1"], [1], []),
        (["b2"], [2], []),
    ]


def test_units_per_job_must_be_a_positive_integer(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("test: {backend: slurm, partition: debug, units_per_job: 0}\n")
    with pytest.raises(FerError, match=r"test\.units_per_job: 0 must be an integer >= 1"):
        load_profile("test", path)
    path.write_text("test: {backend: slurm, partition: debug, units_per_job: 3}\n")
    assert load_profile("test", path) == SlurmProfile(partition="debug", units_per_job=3)


def test_a_pack_job_splits_the_cpus_and_is_tagged_with_its_run_and_units(monkeypatch, tmp_path):
    fake_slurm_tools(monkeypatch, tmp_path)
    backend = SlurmBackend(SlurmProfile(partition="debug", cpus_per_job=8, units_per_job=3))
    rundir = RunDir(tmp_path / "run")
    units = _chain(3)[1:4]
    text = sbatch_script(backend.executor(rundir, [tuple(units)], "afterok:41", "KEY"))
    assert "--job-name=fer-pack3-a1" in text and "--cpus-per-task=8" in text
    assert f"--comment={run_tag(rundir.path)}:KEY" in text and "--array" not in text
    assert str(rundir.path / "arrays" / "KEY") in text and "--dependency=afterok:41" in text
    assert backend.job_env(tuple(units))["OMP_NUM_THREADS"] == "2"
    assert run_tag(tmp_path / "run") != run_tag(tmp_path / "other")  # same grid, other dir


# --- job arrays, no cluster needed -----------------------------------------------------------
def _arrays(units: list[Unit], per_job: int = 1, known: dict[str, str] | None = None):
    """The plan as (units per task, dependency with the arrays named 0, 1, ...)."""
    arrays = plan_arrays(plan_packs(units, per_job, known or {}), max_size=3)
    names = [str(i) for i in range(len(arrays))]
    return [
        ([[u.id for u in p.units] for p in a.packs], dependency_of(a, arrays, names))
        for a in arrays
    ]


def test_a_wave_shares_arrays_and_each_child_waits_on_its_own_parents_task():
    assert _arrays(_chain(2)) == [
        ([["p"]], ""),
        ([["a1"], ["a2"]], "afterok:0"),
        ([["b1"], ["b2"]], "aftercorr:1"),  # b_i waits on task i of array 1: a_i
    ]
    # MaxArraySize 3: four stage-1 units in two arrays, each with its own aligned children.
    assert _arrays(_chain(4)[1:], known={"p": "41"}) == [
        ([["a1"], ["a2"], ["a3"]], "afterok:41"),
        ([["a4"]], "afterok:41"),
        ([["b1"], ["b2"], ["b3"]], "aftercorr:0"),
        ([["b4"]], "afterok:1"),
    ]
    # Parents in an earlier launch: children of different jobs cannot share one dependency.
    assert _arrays(_chain(2)[3:], known={"a1": "7_0", "a2": "7_1"}) == [
        ([["b1"]], "afterok:7_0"),
        ([["b2"]], "afterok:7_1"),
    ]
    # Packs of 2: the children's pack waits on its parents' pack.
    assert _arrays(_chain(2), per_job=2) == [
        ([["p"]], ""),
        ([["a1", "a2"]], "afterok:0"),
        ([["b1", "b2"]], "afterok:1"),
    ]


def test_parents_with_a_child_come_first_so_their_children_align():
    units = _chain(3)
    units = units[:4] + [units[5]]  # only a2 has a child: b2
    assert _arrays(units) == [
        ([["p"]], ""),
        ([["a2"], ["a1"], ["a3"]], "afterok:0"),
        ([["b2"]], "afterok:1_0"),
    ]


def test_a_pack_job_fails_for_a_failed_unit_and_keeps_its_siblings_results(tmp_path):
    """PackJob outside SLURM: one unit already done (its worker returns at once), one whose
    spec is missing (its worker exits 1 before it can record why)."""
    from orchestrator.backends.slurm.jobs import PackJob

    rundir = RunDir(tmp_path / "run")
    done = Unit(id="done1", kind="prepare", name="d/prepare", dataset="d", deps=(), spec={})
    rundir.write_dag([done])
    rundir.store.write("prepare", done.id, [{"unit_id": done.id}])
    with pytest.raises(FerError, match=r"1 of the 2 units of this job failed: missing1 "):
        PackJob({"OMP_NUM_THREADS": "1"})(str(rundir.path), [done.id, "missing1"])
    assert rundir.failure(done.id) is None and rundir.store.is_done(done.id, "prepare")
    assert "exited with status 1" in rundir.failure("missing1")
    log = next((rundir.unit_dir("missing1") / "slurm").glob("*_pack_log.out")).read_text()
    assert "unit spec not found" in log


def test_dry_run_shows_the_arrays_their_sbatch_parameters_and_gpu_hours(tmp_path):
    """The demo grid on the `slurm` profile: 51 units in 3 sbatch calls (prepare, without a
    GPU and for an hour (`resources: prepare`); the stage-1 array after it; the stage-2 array,
    task i after stage-1 task i), the GPU-hours requested at --time as the upper bound, and an
    estimate only from epochs measured on a GPU with the same backbone and input size."""
    run = tmp_path / "run"
    out = io.StringIO()
    launch("demo", cluster="slurm", run_dir=run, dry_run=True, out=out)
    text = out.getvalue()
    assert "slurm: 3 sbatch calls (job arrays) for 51 units in 51 tasks" in text, text
    assert "--partition=gpu" in text and "--gpus-per-node=1" in text and "--time=240" in text
    assert re.search(
        r"wave 0 A1: --time=60 --job-name=\S+ \(no --gpus-per-node\) .*prepare", text
    ), text
    assert re.search(r"wave 1 A2: --array=0-29%30 .*--dependency=afterok:A1 ", text), text
    assert re.search(r"wave 2 A3: --array=0-19%20 .*--dependency=aftercorr:A2 ", text), text
    assert (
        "requested (upper bound, every job at its --time): 200.0 GPU-hours (50 of 51 jobs" in text
    )
    assert "estimate: no measurement on this device (GPU) for 50 training units" in text
    assert not (run / "submissions.json").exists()

    # One stage-1 unit measured on this machine's CPU (its result incomplete: it runs again):
    # never a GPU-hour.
    units = expand(load_grid("demo"), run)
    first = next(u for u in units if u.kind == "train")
    size = first.spec["input_size"]

    def measure(
        rundir: RunDir, unit_id: str, device: str, input_size: int, seconds: float, world=1
    ):
        row = {"unit_id": unit_id, "backbone": "tiny", "input_size": input_size, "device": device}
        rundir.store.write("runs", unit_id, [{**row, "world_size": world}])
        epochs = [{"unit_id": unit_id, "epoch": e, "seconds": seconds} for e in (1, 2)]
        rundir.store.write("epochs", unit_id, epochs)

    measure(RunDir(run), first.id, "cpu", size, 2.0)
    out = io.StringIO()
    launch("demo", cluster="slurm", run_dir=run, dry_run=True, out=out)
    assert "estimate: no measurement on this device (GPU) for 50 training units" in out.getvalue()

    # An earlier run on a GPU: tiny at this input size, 0.5 s per epoch, counts; a
    # measurement at another input size does not.
    earlier = RunDir(tmp_path / "earlier")
    measure(earlier, "aaaa", "NVIDIA H100", size, 0.5)
    measure(earlier, "bbbb", "NVIDIA H100", size * 2, 9.0)
    # epochs of a 2-rank unit (D-24) count only for units of 2 ranks, not for this profile's 1
    measure(earlier, "cccc", "NVIDIA H100", size, 0.3, world=2)
    out = io.StringIO()
    launch(
        "demo", cluster="slurm", run_dir=run, dry_run=True, out=out, estimate_from=[earlier.path]
    )
    train_epochs = sum(u.spec["config"]["epochs"] for u in units if u.kind == "train")
    left = train_epochs * 0.5 / 3600
    assert (
        f"estimate on NVIDIA H100: {left:.2f} GPU-hours ({left:.2f} unit-hours of training) "
        f"for 50 of 50 training units; from tiny@{size}px 0.50 s/epoch (2 epochs)"
    ) in out.getvalue(), out.getvalue()
    assert "2 ranks" not in out.getvalue()
