"""torchrun / DDP / FSDP2 for training. One code path: a single process needs no launcher.

Launch several processes (one node or many) with torchrun, e.g.
`torchrun --nnodes 2 --nproc-per-node 8 --rdzv-endpoint HOST:29500 -m cellfm.cli pretrain ...`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (env RANK / WORLD_SIZE / LOCAL_RANK), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    return DistInfo(rank, world, local_rank, dev)


def wrap_for_training(
    modules: dict[str, nn.Module], mode: str, info: DistInfo, reshard_after_forward: bool | None = None
) -> dict[str, nn.Module]:
    """DDP wrappers (or in-place FSDP2 sharding per block) for the student's modules.

    Forward-only copies (the EMA teacher) pass `reshard_after_forward=True` so their parameters are
    sharded again after every forward, like the student's after backward.
    """
    if info.world_size == 1:
        return dict(modules)
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.device.index] if info.device.type == "cuda" else None
        return {k: DDP(m, device_ids=ids, find_unused_parameters=True) for k, m in modules.items()}
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for m in modules.values():
            kw = {} if reshard_after_forward is None else {"reshard_after_forward": reshard_after_forward}
            for blk in getattr(_inner(m), "blocks", []):
                fully_shard(blk, **kw)
            fully_shard(m, **kw)
        return dict(modules)
    raise ValueError(f"train.distributed must be 'ddp' or 'fsdp', got {mode!r}")


def _inner(m: nn.Module) -> nn.Module:
    return getattr(m, "backbone", m) if not hasattr(m, "blocks") else m


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
