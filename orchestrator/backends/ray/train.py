"""One training unit as a Ray Train run: `world` ranks, data-parallel, inside its Tune trial.

A unit of more than one rank (`RayProfile.unit_ranks`) is not forked from the trial's server:
its trial drives a Ray Train `TorchTrainer` whose workers are its ranks. Each worker runs the
unit's worker (`orchestrator.run.worker.run`) with the rank environment taken from Ray Train's
context; Ray Train has already joined the workers in a process group (gloo on CPUs, NCCL on
GPUs, timeout `collective_timeout_s`), which fer_core uses as it finds it. Rank 0's output goes
to units/<id>/ray.log, rank r's to units/<id>/ray.rank<r>.log.

Resources. Each worker takes `cpus_per_trial` CPUs (and one GPU on a GPU unit). The trial that
drives the trainer only waits on it, so it holds no CPU: Tune cannot run a trial on nothing,
so it holds a token of memory (DRIVER_RESOURCES). Tune does not see the workers' resources,
which Ray Train reserves itself, so the backend caps a wave's concurrent trials at the units
the cluster fits at once (`concurrent_units`).

Ray Train V2 (the default in Ray 2.60): `trainer.fit()` raises `WorkerGroupError` with each
failed rank's exception. The trainer itself never retries (`max_failures=0`): a retry is
Tune's, as for a one-rank unit, so `max_failures` of the profile means the same on both paths.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fer_core.errors import FerError
from fer_core.ranks import COLLECTIVE_TIMEOUT, NODES
from orchestrator.plan.profiles import RayProfile, UnitRanks
from orchestrator.run.rundir import RunDir

# What the trial driving a trainer holds: no CPU (its workers need them: on a 2-CPU Ray, two
# 1-CPU ranks), and a MiB of memory because Tune refuses a trial that asks for nothing.
DRIVER_RESOURCES = {"cpu": 0.0, "memory": float(2**20)}
# Ray Train V2 patches `print` in its workers to log through its logger as well: each line
# would reach the rank's log twice. Passed on to the controller and workers by Ray Train.
PRINT_PATCH = "RAY_TRAIN_ENABLE_PRINT_PATCH"
# What a surviving rank's collective says when a peer's process is gone (fer_core's reason,
# and gloo's own where fer_core did not translate it): the peer died, Ray may not have noticed.
PEER_LOST = ("stopped answering", "Connection closed by peer", "Connection reset by peer")


def rank_log(rundir: RunDir, unit_id: str, rank: int) -> Path:
    """Rank `rank`'s log: ray.log for rank 0 (the unit's log of record), ray.rank<r>.log
    beside it for the others."""
    return rundir.unit_log(unit_id, "ray") if rank == 0 else rundir.rank_log(unit_id, "ray", rank)


def worker_resources(cpus: float, gpu: bool) -> dict[str, float]:
    """What one Ray Train worker (rank) of a unit asks for: the profile's `cpus_per_trial`,
    and a GPU of its own on a GPU unit."""
    return {"CPU": cpus, **({"GPU": 1.0} if gpu else {})}


def unit_need(profile: RayProfile, ranks: UnitRanks) -> dict[str, float]:
    """Everything one unit holds while it runs, in Ray's resource names."""
    if ranks.world == 1:
        return {"CPU": profile.cpus_per_trial, "GPU": profile.gpus_per_trial}
    each = worker_resources(profile.cpus_per_trial, ranks.gpu)
    return {key: value * ranks.world for key, value in each.items()}


def concurrent_units(
    profile: RayProfile, resources: dict[str, float], widths: list[UnitRanks]
) -> int | None:
    """How many trials of a wave may run at once: `max_concurrent`, and where a unit has
    several ranks, no more than the cluster fits of the widest unit (Tune does not see the
    resources Ray Train takes for its workers, and a trainer waiting for them is retried by
    Ray Train every minute rather than queued). None: no limit."""
    if all(ranks.world == 1 for ranks in widths):
        return profile.max_concurrent
    fits = min(
        math.floor(resources.get(key, 0.0) / need + 1e-9)
        for ranks in widths
        for key, need in unit_need(profile, ranks).items()
        if need > 0
    )
    return max(1, min(fits, profile.max_concurrent or fits))


@dataclass(frozen=True)
class RankFailure:
    """Why a unit's ranks failed: `died` when a rank's process died (killed, out of memory,
    node lost: a retry may succeed), else a rank's own error (a retry would fail again)."""

    died: bool
    reason: str


def rank_failure(failures: Mapping[int, BaseException], world: int) -> RankFailure:
    """The failure of a unit from its ranks' errors (Ray Train's `worker_failures`), named by
    the lowest rank that tells it: a rank that died over one whose collective lost it."""
    from ray.exceptions import RayActorError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    dead = {
        rank: error
        for rank, error in failures.items()
        if isinstance(error, RayActorError | WorkerHealthCheckFailedError)
    }
    if dead:
        rank = min(dead)
        return RankFailure(
            True,
            f"rank {rank} of {world}: its Ray Train worker process died "
            f"({type(dead[rank]).__name__}: killed, out of memory or its node lost)",
        )
    rank = min(failures)
    error = failures[rank]
    line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if not isinstance(error, FerError):
        line = f"{type(error).__name__}: {line}"
    lost = all(any(mark in str(e) for mark in PEER_LOST) for e in failures.values())
    return RankFailure(lost, f"rank {rank} of {world}: {line[:300]}")


def run_ranks(config: dict[str, Any], ranks: UnitRanks, env: dict[str, str]) -> RankFailure | None:
    """In the trial: run its unit as a Ray Train run of `ranks.world` workers; None when it
    finished, else why not. `env`: the scheduler variables of the unit's `runs` row."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.train.v2.api.exceptions import WorkerGroupError

    os.environ.setdefault(PRINT_PATCH, "0")  # before the trainer: Ray Train passes it on
    settings = config["train"]
    rundir = RunDir(Path(config["run_dir"]))
    trainer = TorchTrainer(
        _rank_main,
        train_loop_config={
            "run_dir": config["run_dir"],
            "unit_id": config["unit_id"],
            "threads": max(1, int(config.get("threads") or 1)),
            "env": {**env, COLLECTIVE_TIMEOUT: str(settings["collective_timeout_s"])},
        },
        scaling_config=ScalingConfig(
            num_workers=ranks.world,
            use_gpu=ranks.gpu,
            resources_per_worker=worker_resources(settings["cpus_per_rank"], ranks.gpu),
        ),
        torch_config=TorchConfig(
            backend="nccl" if ranks.gpu else "gloo",
            timeout_s=math.ceil(settings["collective_timeout_s"]),
        ),
        run_config=RunConfig(
            name=f"{config['experiment']}-{config['unit_id']}",
            storage_path=str(rundir.ray_dir / "train"),
            failure_config=FailureConfig(max_failures=0),
        ),
    )
    try:
        trainer.fit()
    except WorkerGroupError as exc:
        return rank_failure(exc.worker_failures, ranks.world)
    return None


def _rank_main(config: dict[str, Any]) -> None:
    """In each Ray Train worker: the unit's worker with this rank's environment, its output
    in the rank's log. An error is printed there and raised, for Ray Train to report by rank
    (worker.run has recorded it in failed.json where its rank keeps the records)."""
    import ray.train

    from fer_core.runtime import use_threads
    from orchestrator.run.worker import output_to, run

    context = ray.train.get_context()
    rank = context.get_world_rank()
    for name in [k for k in os.environ if k.startswith("SLURM_")]:  # launcher_free, in place
        del os.environ[name]
    os.environ.update(config["env"])
    os.environ.update(  # MASTER_ADDR and MASTER_PORT are Ray Train's, of the group it made
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(context.get_world_size()),
            "LOCAL_RANK": str(context.get_local_rank()),
            "LOCAL_WORLD_SIZE": str(context.get_local_world_size()),
            NODES: str(_node_count(context.get_node_rank())),
        }
    )
    use_threads(config["threads"])
    rundir = RunDir(Path(config["run_dir"]))
    with output_to(rank_log(rundir, config["unit_id"], rank)):
        print(
            f"ray train: rank {rank} of {os.environ['WORLD_SIZE']} on {socket.gethostname()} "
            f"({os.environ[NODES]} nodes)",
            flush=True,
        )
        try:
            state = run(config["run_dir"], config["unit_id"])
            print(f"{config['unit_id']}: {state} (rank {rank})")
        except FerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise
        except Exception:
            traceback.print_exc()
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()


def _node_count(node_rank: int) -> int:
    """How many nodes the unit's ranks span: the distinct node ranks of the group (Ray Train
    places workers itself, not necessarily evenly)."""
    import torch.distributed as dist

    gathered: list[int | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, node_rank)
    return len(set(gathered))
