"""Which rank of a data-parallel unit this process is, read from its environment (torch-free).

A unit that runs as several processes (ranks) learns its place from torch's `env://`
variables, whoever set them: the local backend's rank supervisor, submitit's
`TorchDistributedEnvironment` in a SLURM task, or Ray Train in its workers. `RANK`,
`WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR` and `MASTER_PORT` are torch's;
`FER_NODES` (the unit's node count, for its records) and `FER_COLLECTIVE_TIMEOUT_S` (how long
a collective may wait before the unit fails: a rank died or hangs) are ours. Without them a
process is the one rank of a one-process unit. This module imports no torch, so the
orchestrator can ask which rank keeps the records (rank 0, the leader) without loading it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

NODES = "FER_NODES"
COLLECTIVE_TIMEOUT = "FER_COLLECTIVE_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 300.0
# Every variable that places a process in a unit's process group: a backend sets them for
# each rank, and clears them where a process must not inherit its launcher's.
RANK_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    NODES,
    COLLECTIVE_TIMEOUT,
)


@dataclass(frozen=True)
class Ranks:
    """This process's place in its unit: rank `rank` of `world_size`, `local_rank` of the
    `local_world_size` ranks on its node, the unit spanning `nodes` nodes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    nodes: int = 1
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def leader(self) -> bool:
        """Rank 0 keeps the records: checkpoints, store rows, TensorBoard, the log of record."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def ranks_from_env(env: Mapping[str, str] | None = None) -> Ranks:
    """This process's `Ranks` from the environment (`os.environ` by default)."""
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1") or 1)
    local_world = int(env.get("LOCAL_WORLD_SIZE", "") or world)
    return Ranks(
        rank=int(env.get("RANK", "0") or 0),
        world_size=world,
        local_rank=int(env.get("LOCAL_RANK", "0") or 0),
        local_world_size=local_world,
        nodes=int(env.get(NODES, "") or max(1, world // max(local_world, 1))),
        timeout_s=float(env.get(COLLECTIVE_TIMEOUT, "") or DEFAULT_TIMEOUT_S),
    )


def rank_env(
    rank: int, world: int, master_port: int, timeout_s: float, master_addr: str = "127.0.0.1"
) -> dict[str, str]:
    """The environment of rank `rank` of a `world`-rank unit on one node, its group's store at
    `master_addr:master_port` (loopback: the ranks share this machine)."""
    return {
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(world),
        NODES: "1",
        COLLECTIVE_TIMEOUT: str(timeout_s),
    }


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now, for a fresh rendezvous: each attempt of a unit gets its
    own, so a requeued or relaunched group never meets the store of an earlier one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
