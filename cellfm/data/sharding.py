"""Split an epoch's work items across distributed ranks and DataLoader workers, without overlap or gaps."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Shard:
    """This process's slice: rank of world_size, worker of num_workers."""

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    @property
    def index(self) -> int:
        """Position among all rank x worker shards."""
        return self.rank * self.num_workers + self.worker

    @property
    def count(self) -> int:
        """Number of rank x worker shards."""
        return self.world_size * self.num_workers

    def take(self, n_items: int) -> range:
        """Item indices this shard owns: a stride over 0..n_items-1 (counts differ by at most one)."""
        return range(self.index, n_items, self.count)


def current_shard(rank: int | None = None, world_size: int | None = None) -> Shard:
    """Rank from arguments, else torch.distributed, else RANK / WORLD_SIZE; worker from the DataLoader."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank = int(os.environ.get("RANK", 0)) if rank is None else rank
            world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    info = torch.utils.data.get_worker_info()
    worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return Shard(rank, world_size, worker, num_workers)
