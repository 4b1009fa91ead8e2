"""Sharding one evaluation over torchrun processes (NCCL on GPUs, gloo on CPUs).

Work is split by whole batches (batch ``i`` goes to rank ``i % world``), so every item is
encoded in exactly the batch a single process would use: features, and so metrics, are the same
bit for bit in fp32.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Shard:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 prints and writes."""
        return self.rank == 0

    def mine(self, items: Sequence[Any]) -> list[tuple[int, Any]]:
        """(index, item) pairs of ``items`` this rank owns (round robin)."""
        return [(i, items[i]) for i in range(self.rank, len(items), self.world)]


SINGLE = Shard()


def init_from_env(device: str = "auto") -> Shard:
    """Join the torchrun job described by the environment, or return the single-process shard."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = (torch.cuda.is_available() and device in ("auto", "cuda")) or str(device).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Shard(rank=rank, world=world, local_rank=local_rank)


def shard_device(shard: Shard, device: str) -> str:
    """The device of this rank: its own GPU under torchrun, else ``device`` unchanged."""
    if shard.world > 1 and (device in ("auto", "cuda")) and torch.cuda.is_available():
        return f"cuda:{shard.local_rank}"
    return device


def gather_indexed(shard: Shard, local: list[tuple[int, Any]]) -> list[Any]:
    """Every rank's (index, payload) pairs, merged in index order (on every rank)."""
    if shard.world == 1:
        return [p for _, p in sorted(local, key=lambda x: x[0])]
    parts: list[Any] = [None] * shard.world  # all_gather_object fills every slot
    dist.all_gather_object(parts, local)
    merged = sorted((pair for part in parts for pair in part), key=lambda x: x[0])
    indices = [i for i, _ in merged]
    if indices != list(range(len(indices))):
        raise RuntimeError(f"sharded evaluation lost or duplicated batches: got indices {indices[:10]}...")
    return [p for _, p in merged]


def finish(shard: Shard) -> None:
    """Leave the process group."""
    if shard.world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
