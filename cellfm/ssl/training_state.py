"""What a training checkpoint holds, and putting it back: the model (student, teacher, EMA, loss
centres) and the optimizer, full-state or sharded.

Full state: unsharded tensors and optimizer state keyed by parameter name, gathered tensor by tensor
onto the main process only (the others hold nothing); on resume only the main process reads the
file and the tensors are broadcast (and sharded under FSDP) from it, so no other process ever holds
the whole state. Sharded: each process's own shards (DTensors under FSDP2) for
`torch.distributed.checkpoint`, which reshards on load. Both resume on any number of processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from .checkpointing import load_training_state
from .meta_arch import SSLMetaArch
from .sharded_checkpoint import load_sharded

_TENSORS = ("meta", "optimizer")


def fold_center_updates(meta: SSLMetaArch) -> None:
    """Apply the lagged centre updates now: they are not part of the module state, and applying them
    before the next step's targets gives the same values."""
    meta.dino_loss.centering.apply_update()
    meta.ibot_loss.centering.apply_update()


def full_state(meta: SSLMetaArch, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Collective: the full model and optimizer state on the main process (CPU), {} elsewhere."""
    fold_center_updates(meta)
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {
        "meta": get_model_state_dict(meta, options=full),
        "optimizer": get_optimizer_state_dict(meta.student, optimizer, options=full),
    }


def sharded_state(meta: SSLMetaArch, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """This process's shards of the model and optimizer state (DTensors under FSDP2), as references
    to the live tensors: saving or loading them copies nothing whole."""
    return {
        "meta": get_model_state_dict(meta),
        "optimizer": get_optimizer_state_dict(meta.student, optimizer),
        "rng": torch.get_rng_state(),
    }


def read_full_state(out_dir: Path) -> dict[str, Any] | None:
    """`DIR/checkpoint.pt` read by the main process only: the others get its small entries (step,
    config, rng, scaler) and empty `meta` / `optimizer`, which `load_full_state` fills by broadcast.
    Collective under torch.distributed; None (everywhere) when there is no checkpoint."""
    distributed = dist.is_initialized() and dist.get_world_size() > 1
    main = not distributed or dist.get_rank() == 0
    state = load_training_state(out_dir) if main else None
    if state is not None:
        keys = list(state["optimizer"].get("state", {}))
        state["_positional"] = bool(keys) and all(isinstance(k, int) for k in keys)
    if not distributed:
        return state
    small = [None if state is None else {k: v for k, v in state.items() if k not in _TENSORS}]
    dist.broadcast_object_list(small, src=0)
    if small[0] is None or main:
        return state
    if small[0]["_positional"]:  # an older cellfm's optimizer state: every process reads the file
        return load_training_state(out_dir) | {"_positional": True}
    return {**small[0], "meta": {}, "optimizer": {}}


def load_full_state(meta: SSLMetaArch, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Put a full-state checkpoint (from `read_full_state`) into the (possibly sharded) model."""
    positional = state.get("_positional", False)
    distributed = dist.is_initialized() and dist.get_world_size() > 1
    full = StateDictOptions(full_state_dict=True, broadcast_from_rank0=distributed and not positional)
    set_model_state_dict(meta, state["meta"], options=full)  # shards the tensors under FSDP
    if positional:  # older checkpoints: optimizer state keyed by parameter position
        optimizer.load_state_dict(state["optimizer"])
    else:
        set_optimizer_state_dict(meta.student, optimizer, state["optimizer"], options=full)


def load_sharded_state(meta: SSLMetaArch, optimizer: torch.optim.Optimizer, path: Path) -> dict[str, Any]:
    """Read this process's shards from the sharded checkpoint `path` straight into the live tensors
    (the model and optimizer are the load template); returns the loaded state (rng included)."""
    state = load_sharded(path, sharded_state(meta, optimizer))
    set_model_state_dict(meta, state["meta"])
    set_optimizer_state_dict(meta.student, optimizer, state["optimizer"])
    return state
