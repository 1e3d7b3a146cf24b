"""`train.compile`: torch.compile the student's and the teacher's backbones, in place.

On one CUDA process and under DDP on CUDA each backbone compiles whole: one graph per call signature
(the student's packed global + local crops, the teacher's global crops), no break per block. Under
FSDP2, and on CPU (where inductor's lowering of a whole ViT-S/14 student stalled for over 25 minutes),
each block's `forward` compiles on its own, so the per-block all-gather / reshard hooks that
`fully_shard` registers stay outside the graphs (the layout torchtitan uses). Nothing is renamed:
state-dict keys, checkpoints, exports and resume are the same as without compile. The heads stay
eager: the fused prototype loss is an autograd.Function looping over row blocks, and the iBOT rows
change in number every step.

Shapes are static (`dynamic=False`): a backbone seen at two crop sizes gets one graph per size. With
dynamic shapes inductor recompiled the second size symbolically and spent over 30 minutes in sympy on a
ViT-S/14 step on one CPU core (the static graphs of both sizes take minutes).
"""

from __future__ import annotations

import torch
from torch import nn

from .meta_arch import SSLMetaArch


def compile_backbones(
    meta: SSLMetaArch, per_block: bool = False, backend: str = "inductor"
) -> list[nn.Module]:
    """Compile the student's and the teacher's backbones of `meta` (whole, or per block when
    `per_block`) with `backend`; returns the modules whose calls are now compiled."""
    compiled: list[nn.Module] = []
    for backbone in (meta.student["backbone"], meta.teacher["backbone"]):
        if per_block:
            for blk in backbone.blocks:
                # The bound forward, not the module call: FSDP's hooks run around the graph.
                blk.forward = torch.compile(blk.forward, backend=backend, dynamic=False)
                compiled.append(blk)
        else:
            backbone.compile(backend=backend, dynamic=False)
            compiled.append(backbone)
    return compiled


__all__ = ["compile_backbones"]
