"""A unit's process group: its ranks train one model data-parallel (docs/METHOD.md D-24).

`process_group(device)` joins the group the environment describes (`fer_core.ranks`: the
local backend's supervisor, submitit's TorchDistributedEnvironment in a SLURM task), with
NCCL on GPUs and gloo on CPUs, or takes the one Ray Train already made; a process alone is
the one rank of a one-process group and every collective here is then a no-op, so the
trainer has one code path.

A rank that dies (SIGKILL, OOM, a lost node) breaks every collective of the others: gloo
sees the closed connection at once, NCCL waits for the collective timeout. `Group.failure`
turns that error into one line naming the ranks that stopped answering: each surviving rank
marks itself in the group's store (held by rank 0) and waits a few seconds for the others'
marks; the ranks without a mark are the ones gone. If rank 0 is gone, its store went with it,
and the message says rank 0.
"""

from __future__ import annotations

import datetime
import gc
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from fer_core.errors import FerError
from fer_core.ranks import Ranks, ranks_from_env

MARK_WAIT_S = 10.0  # how long a surviving rank waits for the others' marks after a failure


def resolve_device(name: str, ranks: Ranks) -> torch.device:
    """`auto` picks CUDA when present, else the CPU; a rank's CUDA device is its local rank's
    (SLURM tasks and Ray Train workers see only their own GPU: CUDA_VISIBLE_DEVICES narrowed
    to one). A node's ranks that see several GPUs but fewer than they are would share one,
    which NCCL refuses at the first collective: that is said here, before any work."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        count = torch.cuda.device_count()
        if 1 < count < ranks.local_world_size:
            raise FerError(
                f"{ranks.local_world_size} ranks on this node see {count} GPUs: two ranks would "
                f"share a GPU, which NCCL refuses; run at most {count} ranks per node "
                "(procs_per_unit / gpus_per_unit)"
            )
        device = torch.device("cuda", ranks.local_rank % max(count, 1))
    return device


@dataclass
class Group:
    """This rank's place in its unit's process group, and the collectives the trainer uses.
    `backend` is `none` for a one-process unit."""

    ranks: Ranks
    backend: str = "none"
    epoch: int = 0  # the epoch under way, named when a rank is lost

    @property
    def rank(self) -> int:
        return self.ranks.rank

    @property
    def world(self) -> int:
        return self.ranks.world_size

    @property
    def leader(self) -> bool:
        return self.ranks.leader

    @property
    def distributed(self) -> bool:
        return self.backend != "none"

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """`values` summed over the ranks (in place)."""
        if self.distributed:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def all_min(self, values: torch.Tensor) -> torch.Tensor:
        """`values`' minimum over the ranks (in place)."""
        if self.distributed:
            dist.all_reduce(values, op=dist.ReduceOp.MIN)
        return values

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's `value` (picklable), in rank order."""
        if not self.distributed:
            return [value]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's share of `rows` to score: every `world`-th row from its rank, so the
        ranks together score each row exactly once (`gather_rows` puts them back)."""
        return rows[self.rank :: self.world] if self.distributed else rows

    def gather_rows(self, part: torch.Tensor, n: int) -> torch.Tensor:
        """The rows of all ranks' `shard`s (`part`: this rank's, N_r x ...) back in their
        original order, on every rank: n rows, each once."""
        if not self.distributed:
            return part
        size = math.ceil(n / self.world)
        padded = torch.zeros((size, *part.shape[1:]), dtype=part.dtype, device=self._device())
        padded[: len(part)] = part
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        # row i was rank i % world's (i // world)-th: interleave, then drop the padding
        rows = torch.stack(parts, dim=1).reshape(size * self.world, *part.shape[1:])[:n]
        return rows.to(part.device)

    def _device(self) -> torch.device:
        """Where this group's collectives take their tensors: NCCL's on the rank's GPU."""
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank, so the ranks score
        the model rank 0 saves: per-rank BatchNorm updates each rank's own statistics."""
        if self.distributed:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def failure(self, error: BaseException) -> FerError:
        """The one-line reason for a collective that failed: which ranks stopped answering."""
        cause = " ".join(str(error).split())[:200] or type(error).__name__
        lost = self._lost_ranks()
        if lost is None:
            who = f"rank 0 of {self.world} (it holds the group's store)"
        elif lost:
            who = ", ".join(f"rank {r}" for r in lost) + f" of {self.world}"
        else:
            return FerError(
                f"rank {self.rank} of {self.world}: a collective failed during epoch "
                f"{self.epoch} while every rank still answered: {cause}"
            )
        return FerError(
            f"{who} stopped answering (killed, out of memory or crashed) during epoch "
            f"{self.epoch}; rank {self.rank} saw: {cause}; a re-launch resumes the unit from "
            "its last epoch checkpoint"
        )

    def _lost_ranks(self) -> list[int] | None:
        """The ranks that did not mark themselves alive within MARK_WAIT_S; None when the
        store (rank 0's) cannot be reached."""
        try:
            store = dist.distributed_c10d._get_default_store()
            store.set_timeout(datetime.timedelta(seconds=MARK_WAIT_S))
            store.set(f"fer/alive/{self.rank}", "1")
            deadline = time.monotonic() + MARK_WAIT_S
            keys = [f"fer/alive/{r}" for r in range(self.world)]
            while time.monotonic() < deadline and not store.check(keys):
                time.sleep(0.2)
            return [r for r in range(self.world) if not store.check([keys[r]])]
        except (RuntimeError, ValueError):  # the store's host (rank 0) is gone
            return None


def is_collective_error(error: BaseException) -> bool:
    """True for an error raised by a broken process group (a peer gone, a timeout), not by
    the training itself (a NaN, CUDA out of memory, bad data)."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        word in text for word in ("gloo", "Gloo", "NCCL", "Connection closed", "Connection reset")
    )


@contextmanager
def process_group(device_name: str) -> Iterator[tuple[Group, torch.device]]:
    """This process's group and training device for the duration of a unit.

    A group made here (the environment names a world > 1) is destroyed on the way out; one
    made by the caller (Ray Train) is left to it.
    """
    ranks = ranks_from_env()
    if dist.is_available() and dist.is_initialized():  # Ray Train made it
        ranks = Ranks(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=ranks.local_rank,
            local_world_size=ranks.local_world_size,
            nodes=ranks.nodes,
            timeout_s=ranks.timeout_s,
        )
        device = resolve_device(device_name, ranks)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        try:
            yield Group(ranks, str(dist.get_backend())), device
        finally:
            gc.collect()  # our DistributedDataParallel's cycles, before Ray tears the group down
        return
    device = resolve_device(device_name, ranks)
    if not ranks.distributed:
        yield Group(ranks), device
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(
            backend,
            init_method="env://",
            rank=ranks.rank,
            world_size=ranks.world_size,
            timeout=datetime.timedelta(seconds=ranks.timeout_s),
        )
    except (RuntimeError, ValueError) as exc:
        raise FerError(
            f"rank {ranks.rank} of {ranks.world_size}: cannot join the unit's process group "
            f"({backend}): {' '.join(str(exc).split())[:200]}"
        ) from None
    print(
        f"process group: rank {ranks.rank} of {ranks.world_size} ({backend}, {ranks.nodes} nodes)",
        flush=True,
    )
    try:
        yield Group(ranks, backend), device
        dist.barrier()  # every rank is past its last collective before any tears the group down
    finally:
        # DistributedDataParallel's reducer keeps the group in reference cycles; freed only at
        # interpreter exit, gloo's worker threads were seen to abort the process (SIGABRT,
        # "terminate called without an active exception") after a unit that had finished
        gc.collect()
        dist.destroy_process_group()
