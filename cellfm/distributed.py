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
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for the fp32 matmuls (fp32 recipes)
        torch.backends.cudnn.allow_tf32 = True
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    return DistInfo(rank, world, local_rank, dev)


LOW_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}


def mixed_precision_policy(precision: str, name: str):
    """FSDP2 policy for the module `name` of a model trained at `precision` (fp32 | bf16 | fp16):
    parameters are gathered in the low precision; gradients are reduced in it for the backbone
    and in float32 for the heads (as DINOv2 does, against head instabilities). None for fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    low = LOW_PRECISION.get(precision)
    if low is None:
        return None
    return MixedPrecisionPolicy(param_dtype=low, reduce_dtype=low if name == "backbone" else torch.float32)


def wrap_for_training(
    modules: dict[str, nn.Module],
    mode: str,
    info: DistInfo,
    reshard_after_forward: bool | None = None,
    *,
    precision: str = "fp32",
    find_unused_parameters: bool = False,
) -> dict[str, nn.Module]:
    """DDP wrappers (or in-place FSDP2 sharding per block) for the student's modules.

    FSDP: one unit per block plus one per module, each with `mixed_precision_policy`; the student
    keeps its parameters gathered from forward to backward unless `reshard_after_forward` (one
    all-gather per step, like SHARD_GRAD_OP), forward-only copies pass True (`shard_forward_only`).
    DDP: gradients of the backbone are all-reduced in bf16 / fp16 at those precisions (the heads in
    fp32); `find_unused_parameters` only where a parameter can go without a gradient in a step.
    """
    if info.world_size == 1:
        return dict(modules)
    if mode == "ddp":
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.device.index] if info.device.type == "cuda" else None
        hooks = {"bf16": default_hooks.bf16_compress_hook, "fp16": default_hooks.fp16_compress_hook}
        out = {}
        for name, m in modules.items():
            out[name] = DDP(m, device_ids=ids, find_unused_parameters=find_unused_parameters)
            if name == "backbone" and precision in hooks:
                out[name].register_comm_hook(None, hooks[precision])
        return out
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for name, m in modules.items():
            kw = {} if reshard_after_forward is None else {"reshard_after_forward": reshard_after_forward}
            policy = mixed_precision_policy(precision, name)
            if policy is not None:
                kw["mp_policy"] = policy
            for blk in getattr(_inner(m), "blocks", []):
                fully_shard(blk, **kw)
            fully_shard(m, **kw)
        return dict(modules)
    raise ValueError(f"train.distributed must be 'ddp' or 'fsdp', got {mode!r}")


def shard_forward_only(modules: dict[str, nn.Module], info: DistInfo, precision: str = "fp32") -> None:
    """FSDP2-shard a copy that only runs forward or is only updated in place (the EMA teacher, the
    frozen distillation teacher): parameters gathered per block in the low precision, then freed."""
    wrap_for_training(modules, "fsdp", info, reshard_after_forward=True, precision=precision)


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
