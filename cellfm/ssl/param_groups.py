"""Optimizer parameter groups: layer-wise lr decay, patch-embedding lr multiplier, no weight decay on
biases / norms / LayerScale, and a flag for the prototype (`last_layer`) weights frozen early on."""

from __future__ import annotations

import re
from collections import defaultdict

from torch import nn

_EMBEDDINGS = ("pos_embed", "patch_embed", "mask_token", "cls_token", "register_tokens")
_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def layer_id(name: str, depth: int, in_backbone: bool) -> int:
    """0 for embeddings and tokens, i + 1 for block i, depth + 1 for everything else (heads, norm)."""
    if not in_backbone:
        return depth + 1
    leaf = name.split("backbone.")[-1]
    if leaf.split(".")[0] in _EMBEDDINGS:
        return 0
    match = _BLOCK.search(name)
    return int(match.group(1)) + 1 if match else depth + 1


def param_groups(
    model: nn.Module,
    depth: int,
    layerwise_decay: float = 0.9,
    patch_embed_lr_mult: float = 0.2,
) -> list[dict]:
    """Groups of parameters sharing (lr_multiplier, wd_multiplier, is_last_layer).

    `model` holds submodules named `backbone`, `dino_head` and optionally `ibot_head`; only
    parameters under `backbone` get layer-wise decay.
    """
    grouped: dict[tuple[float, float, bool], list] = defaultdict(list)
    names: dict[tuple[float, float, bool], list[str]] = defaultdict(list)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        in_backbone = name.startswith("backbone.")
        lr_mult = layerwise_decay ** (depth + 1 - layer_id(name, depth, in_backbone))
        if in_backbone and "patch_embed" in name:
            lr_mult *= patch_embed_lr_mult
        no_decay = name.endswith(".bias") or "norm" in name or "gamma" in name
        key = (lr_mult, 0.0 if no_decay else 1.0, "last_layer" in name)
        grouped[key].append(param)
        names[key].append(name)
    return [
        {
            "params": params,
            "lr_multiplier": k[0],
            "wd_multiplier": k[1],
            "is_last_layer": k[2],
            "names": names[k],
        }
        for k, params in grouped.items()
    ]
