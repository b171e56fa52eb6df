"""Multi-rank units on SLURM without a cluster: the job parameters of a unit of N ranks on M
nodes, the sbatch text, the rank environment a task exports (each requeue a fresh
rendezvous port), a launcher inside an allocation submitting clean jobs, the post-mortem
that names a dead rank from srun's log, and the GPU-/CPU-hours the dry run and the report
count for a multi-rank unit. The jobs themselves run in test_backend.py's cluster tests.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys

import pytest

from fer_core.ranks import COLLECTIVE_TIMEOUT, NODES, RANK_ENV
from orchestrator.backends.slurm.backend import (
    SlurmBackend,
    dead_rank,
    job_parameters,
    post_mortem,
)
from orchestrator.backends.slurm.control import clean_env, launcher_env
from orchestrator.backends.slurm.jobs import PORT_MIN, PORT_SPAN, rendezvous_port
from orchestrator.backends.slurm.ranks import job_totals
from orchestrator.plan.profiles import SlurmProfile, load_profile
from orchestrator.plan.unit import Unit
from orchestrator.report.cost import _advice, _hours
from orchestrator.run.launch import launch
from orchestrator.run.rundir import RunDir, Submission
from tests.helpers import REPO, fake_slurm_tools, sbatch_script

TRAIN = Unit(id="t1", kind="train", name="ckplus/f01/tiny/ce", dataset="ckplus", deps=("p",),
             spec={}, backbone="tiny")  # fmt: skip
PREPARE = Unit(id="p", kind="prepare", name="ckplus/prepare", dataset="ckplus", deps=(), spec={})
GPUS_8_ON_2 = SlurmProfile(
    partition="gpu",
    gpus_per_job=1,
    cpus_per_job=6,
    time_min=60,
    gpus_per_unit=8,
    nodes_per_unit=2,
    collective_timeout_s=120.0,
)


def test_a_multi_gpu_unit_is_one_job_of_a_task_per_gpu_over_its_nodes(tmp_path):
    params = job_parameters(GPUS_8_ON_2, RunDir(tmp_path / "run"), [(TRAIN,), (TRAIN,)], "", "K")
    assert (params["nodes"], params["ntasks_per_node"], params["gpus_per_node"]) == (2, 4, 4)
    assert params["cpus_per_task"] == 6  # each rank has the unit's CPUs
    assert params["srun_args"] == ["--kill-on-bad-exit=1"]  # a dead rank ends the job
    assert job_totals(GPUS_8_ON_2, [TRAIN]) == (8, 48)
    # preparation stays one process on one node, without the srun flag
    prepare = job_parameters(GPUS_8_ON_2, RunDir(tmp_path / "run"), [(PREPARE,)], "", "K")
    assert (prepare["nodes"], prepare["ntasks_per_node"], prepare["gpus_per_node"]) == (1, 1, 1)
    assert "srun_args" not in prepare and job_totals(GPUS_8_ON_2, [PREPARE]) == (1, 6)


def test_the_jobs_env_carries_the_units_nodes_and_collective_timeout(monkeypatch, tmp_path):
    fake_slurm_tools(monkeypatch, tmp_path)
    backend = SlurmBackend(GPUS_8_ON_2)
    env = backend.job_env((TRAIN,))
    assert (env[NODES], env[COLLECTIVE_TIMEOUT], env["OMP_NUM_THREADS"]) == ("2", "120.0", "6")
    assert NODES not in backend.job_env((PREPARE,))
    job, _, _ = backend._call(RunDir(tmp_path / "run"), (TRAIN,))
    assert job.gpu and job.env == env


def test_the_sbatch_text_of_a_two_rank_cpu_unit(monkeypatch, tmp_path):
    """`slurm-local-2proc` of cluster.yaml: two tasks of one CPU each on the one node."""
    fake_slurm_tools(monkeypatch, tmp_path)
    profile = load_profile("slurm-local-2proc")
    assert isinstance(profile, SlurmProfile)
    backend = SlurmBackend(profile)
    text = sbatch_script(backend.executor(RunDir(tmp_path / "run"), [(TRAIN,)], "", "KEY"))
    for line in ("--nodes=1\n", "--ntasks-per-node=2\n", "--cpus-per-task=1\n"):
        assert f"#SBATCH {line}" in text, text
    assert "gpus" not in text
    srun = next(line for line in text.splitlines() if line.startswith("srun "))
    assert "--kill-on-bad-exit=1" in srun and "%j_%t_log.out" in srun  # one log per rank
    job, _, _ = backend._call(RunDir(tmp_path / "run"), (TRAIN,))
    assert not job.gpu


def test_each_attempt_of_a_job_meets_at_a_port_of_its_own():
    ports = [rendezvous_port("4242_3", restart) for restart in range(50)]
    assert len(set(ports)) == 50  # a requeue never meets its previous run's store
    assert all(PORT_MIN <= port < PORT_MIN + PORT_SPAN for port in ports)
    assert rendezvous_port("4242_3", 1) == rendezvous_port("4242_3", 1)  # every rank agrees
    assert rendezvous_port("4242_3", 0) != rendezvous_port("4242_4", 0)


def _task_env(rank: int, restart: int | None, **extra: str) -> dict[str, str]:
    """What SLURM and submitit's sbatch script set in task `rank` of a 2-task job 77."""
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO),
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": "77",
        "SLURM_NTASKS": "2",
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank),
        "SLURM_NODEID": "0",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_JOB_NODELIST": "node7",
        "MASTER_PORT": "1234",  # inherited from somewhere: never this attempt's
        **extra,
    }
    if restart is not None:
        env["SLURM_RESTART_COUNT"] = str(restart)
    return env


JOIN = (
    "import json, os\n"
    "from orchestrator.backends.slurm.jobs import UnitJob\n"
    "UnitJob({'FER_NODES': '1'}, gpu=%r)._join_ranks()\n"
    "print(json.dumps({k: os.environ.get(k) for k in (*%r, 'CUDA_VISIBLE_DEVICES')}))\n"
)


@pytest.mark.parametrize(("rank", "restart"), [(0, None), (1, None), (1, 2)])
def test_a_task_exports_its_rank_and_this_attempts_rendezvous(rank, restart):
    """A task's process (as in the job, without a cluster): torch's env:// variables from
    submitit's helper, the port of this attempt, the rank line in its log."""
    done = subprocess.run(
        [sys.executable, "-c", JOIN % (True, RANK_ENV)],
        env=_task_env(rank, restart, CUDA_VISIBLE_DEVICES="4,6"),
        capture_output=True,
        text=True,
        check=True,
    )
    line, exported = done.stdout.splitlines()[-2:]
    env = json.loads(exported)
    port = rendezvous_port("77", restart or 0)
    assert env == {
        "MASTER_ADDR": "node7",
        "MASTER_PORT": str(port),
        "RANK": str(rank),
        "WORLD_SIZE": "2",
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": "2",
        NODES: "1",
        COLLECTIVE_TIMEOUT: None,
        "CUDA_VISIBLE_DEVICES": ["4", "6"][rank],  # its own of the node's GPUs
    }
    assert line.startswith(f"rank {rank} of 2 (local rank {rank} of 2, node 0 of 1) in job 77: ")
    assert line.endswith(
        f"rendezvous node7:{port}, restart {restart or 0}, collective timeout 300.0 s"
    )


def test_a_launcher_inside_an_allocation_hands_on_none_of_its_variables(monkeypatch, tmp_path):
    """sbatch (submitit's and ours) and every SLURM tool run without the allocation's SLURM_*,
    submitit's and the rank variables; SLURM_CONF (where the config is) is kept."""
    inherited = {
        "SLURM_JOB_ID": "9",
        "SLURM_CPUS_PER_TASK": "1",
        "SLURM_NTASKS": "1",
        "SLURMD_NODENAME": "vm",
        "SUBMITIT_EXECUTOR": "slurm",
        "RANK": "0",
        "MASTER_PORT": "29500",
        NODES: "1",
        "SLURM_CONF": "/etc/slurm/slurm.conf",
    }
    for name, value in inherited.items():
        monkeypatch.setenv(name, value)
    env = launcher_env()
    assert [name for name in inherited if name in env] == ["SLURM_CONF"]
    assert env["PATH"] == os.environ["PATH"]
    with clean_env():
        assert "SLURM_JOB_ID" not in os.environ and "RANK" not in os.environ
    assert {name: os.environ[name] for name in inherited} == inherited  # restored

    # submitit's sbatch, as a launch calls it: the stand-in records its environment
    fake_slurm_tools(monkeypatch, tmp_path)
    seen = tmp_path / "sbatch.env"
    sbatch = tmp_path / "bin" / "sbatch"
    sbatch.write_text(f'#!/bin/sh\nenv > {seen}\necho "Submitted batch job 4242"\n')
    rundir = RunDir(tmp_path / "run")
    rundir.write_dag([PREPARE])
    SlurmBackend(SlurmProfile(partition="debug"))._sbatch(rundir, _array(PREPARE), "")
    names = {line.partition("=")[0] for line in seen.read_text().splitlines()}
    assert not {n for n in names if n.startswith(("SLURM_", "SUBMITIT_")) and n != "SLURM_CONF"}
    assert not names & set(RANK_ENV)
    assert rundir.submissions()[PREPARE.id]["job_id"] == "4242"


def _array(unit: Unit):
    from orchestrator.backends.slurm.arrays import plan_arrays
    from orchestrator.backends.slurm.pack import plan_packs

    return plan_arrays(plan_packs([unit], 1, {}), None)[0]


def _log(rundir: RunDir, text: str) -> None:
    folder = rundir.array_dir("KEY")
    folder.mkdir(parents=True)
    (folder / "51_3_0_log.out").write_text(text)


def test_the_post_mortem_names_the_rank_srun_saw_die_in_the_last_run(tmp_path):
    rundir = RunDir(tmp_path / "run")
    _log(
        rundir,
        "rank 0 of 2 (local rank 0 of 2, node 0 of 1) in job 51_3: rendezvous vm:1, restart 0\n"
        "srun: error: vm: tasks 0-1: Terminated\n"  # the requeue of the first run
        "rank 0 of 2 (local rank 0 of 2, node 0 of 1) in job 51_3: rendezvous vm:2, restart 1\n"
        "epoch 1 ...\n"
        "srun: error: vm: task 1: Killed\n"
        "srun: launch/slurm: _step_signal: Terminating StepId=51.0\n"
        "srun: error: vm: task 0: Terminated\n",
    )
    reason = dead_rank(rundir, "KEY", "51_3")
    assert reason is not None and reason.startswith("rank 1 ended on vm (Killed, as srun reports")
    assert dead_rank(rundir, "KEY", "51_4") is None  # no log
    assert dead_rank(rundir, "", "51_3") is None  # no record of the array


def test_a_run_without_a_dead_rank_in_its_log_gets_no_post_mortem(tmp_path):
    rundir = RunDir(tmp_path / "run")
    _log(rundir, "rank 0 of 2 (local rank 0 of 2) in job 51_3: rendezvous vm:1, restart 0\n")
    assert dead_rank(rundir, "KEY", "51_3") is None


def test_the_post_mortem_never_overwrites_the_units_own_reason(tmp_path):
    rundir = RunDir(tmp_path / "run")
    _log(rundir, "srun: error: vm: task 1: Killed\n")
    record = Submission(backend="slurm", job_id="51_3", array="KEY")
    rundir.mark_failed("u", "rank 1 of 2 stopped answering during epoch 3")
    post_mortem(rundir, "u", record)
    assert rundir.failure("u") == "rank 1 of 2 stopped answering during epoch 3"
    rundir.clear_failed("u")
    post_mortem(rundir, "u", record)
    assert str(rundir.failure("u")).startswith("rank 1 ended on vm (Killed")


def test_dry_run_shows_the_ranks_of_a_unit_and_counts_all_its_gpus(tmp_path):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(
        "multi: {backend: slurm, partition: gpu, gpus_per_job: 1, cpus_per_job: 4,"
        " time_min: 60, gpus_per_unit: 4, nodes_per_unit: 2}\n"
    )
    out = io.StringIO()
    launch("demo", cluster="multi", cluster_file=cluster, run_dir=tmp_path / "run",
           dry_run=True, out=out)  # fmt: skip
    text = out.getvalue()
    assert (
        "--nodes=2 --ntasks-per-node=2 --cpus-per-task=4 --time=60 --partition=gpu "
        "--gpus-per-node=2 (srun --kill-on-bad-exit=1)"
    ) in text, text
    assert (
        "each training unit is one job of 4 ranks (SLURM tasks) on 2 node(s), 2 per node " in text
    )
    assert "(one GPU each, 4 GPUs in all, NCCL)" in text
    assert "wave 0 A1: --nodes=1 --ntasks-per-node=1 --gpus-per-node=1 " in text
    # 50 trainings x 4 GPUs x 1 h, and the preparation job's one GPU
    assert "requested (upper bound, every job at its --time): 201.0 GPU-hours" in text


def test_the_cost_section_counts_every_gpu_of_a_multi_gpu_unit():
    row = {"unit_id": TRAIN.id, "units_in_job": 1, "elapsed_s": 1800.0, "gpus": 8, "cpus": 48}
    hours = _hours([row], {TRAIN.id: TRAIN}, GPUS_8_ON_2)
    assert hours == {"gpu": 4.0, "gpu_req": 8.0, "cpu": 24.0, "cpu_req": 48.0}


def test_a_ranks_resources_row_counts_the_whole_units_gpus_and_cpus(monkeypatch):
    """Rank 0 writes its unit's row: every rank's GPU (one each) and every task's CPUs, as
    SLURM's AllocTRES counts the job, so both views of an attempt agree."""
    from orchestrator.run.resources import _cpus, _gpus

    for name, value in (("CUDA_VISIBLE_DEVICES", "3"), ("WORLD_SIZE", "8")):
        monkeypatch.setenv(name, value)
    for name, value in (("SLURM_CPUS_PER_TASK", "6"), ("SLURM_NTASKS", "8")):
        monkeypatch.setenv(name, value)
    assert (_gpus(), _cpus()) == (8, 48)
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert (_gpus(), _cpus()) == (1, 6)


def test_one_process_units_never_share_an_array_with_multi_rank_units(monkeypatch, tmp_path):
    """A trial (one process) and a training (2 ranks) of one wave ask for the same CPUs per
    task, but not for the same tasks: two arrays."""
    from orchestrator.backends.slurm.arrays import plan_arrays
    from orchestrator.backends.slurm.pack import plan_packs

    fake_slurm_tools(monkeypatch, tmp_path)
    profile = load_profile("slurm-local-2proc")
    assert isinstance(profile, SlurmProfile)
    trial = Unit(id="t0", kind="trial", name="ckplus/f01/tiny/ce/trial0", dataset="ckplus",
                 deps=("p",), spec={}, backbone="tiny")  # fmt: skip
    packs = plan_packs([trial, TRAIN], 1, {"p": "41"})
    arrays = plan_arrays(packs, None, SlurmBackend(profile)._resource_class)
    assert [[p.units[0].id for p in a.packs] for a in arrays] == [["t0"], ["t1"]]
    tasks = [
        job_parameters(profile, RunDir(tmp_path), [p.units for p in a.packs], "", "K")
        for a in arrays
    ]
    assert [params["ntasks_per_node"] for params in tasks] == [1, 2]


def test_the_memory_advice_counts_every_rank_a_node_holds():
    """`--mem` is per node; a peak RSS is one process's. With 4 ranks per node the advice
    compares the request with 4 x the peak, and says so; a one-process job as before."""
    rows = [{"unit_id": TRAIN.id, "max_rss_mb": 3072.0, "sacct_max_rss_mb": 2048.0,
             "elapsed_s": 60.0, "cpu_efficiency": 0.5, "gpu_utilisation_pct": None}]  # fmt: skip
    profile = dataclasses.replace(GPUS_8_ON_2, mem_gb=32)
    (line,) = _advice(rows, {TRAIN.id: TRAIN}, profile)
    assert "mem_gb 32 requested per node, up to 12.0 used (4 ranks per node, each at most 3.0)" in (
        line
    )
    one = dataclasses.replace(profile, gpus_per_unit=1, nodes_per_unit=1)
    (line,) = _advice(rows, {TRAIN.id: TRAIN}, one)
    assert "mem_gb 32 requested, 3.0 used at most" in line
