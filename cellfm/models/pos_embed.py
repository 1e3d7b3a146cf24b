"""Resampling a square grid of learned positional embeddings to any patch grid.

Two variants exist in released DINOv2 checkpoints and both are reproduced bit-exactly:
- offset models (the original 2023 release): bicubic with `scale_factor = (h0 + 0.1) / M`, no
  antialias. The scale factor, not the output size, drives the coordinate mapping, so the small
  offset changes the values as well as guarding the output size against rounding.
- register models: bicubic to `size = (h0, w0)` with antialias.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def interpolate_pos_embed(
    pos_embed: torch.Tensor,
    grid_hw: tuple[int, int],
    num_prefix: int = 1,
    offset: float = 0.1,
    antialias: bool = False,
) -> torch.Tensor:
    """Return `pos_embed` (1, prefix + M*M, D) resampled to (1, prefix + h0*w0, D).

    The prefix (class) positions are kept as they are. Returns the input unchanged when the grid is
    already square with M*M patches, as the official code does.
    """
    h0, w0 = grid_hw
    n = pos_embed.shape[1] - num_prefix
    if n == h0 * w0 and h0 == w0:
        return pos_embed
    m = int(math.sqrt(n))
    if m * m != n:
        raise ValueError(f"pos_embed holds {n} patch positions, which is not a square grid")
    dtype = pos_embed.dtype
    pos = pos_embed.float()
    prefix, patch = pos[:, :num_prefix], pos[:, num_prefix:]
    dim = pos.shape[-1]
    grid = patch.reshape(1, m, m, dim).permute(0, 3, 1, 2)
    if offset:
        scale = (float(h0 + offset) / math.sqrt(n), float(w0 + offset) / math.sqrt(n))
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=antialias)
    else:
        grid = F.interpolate(grid, size=(h0, w0), mode="bicubic", antialias=antialias)
    if grid.shape[-2:] != (h0, w0):
        raise RuntimeError(f"positional grid resampled to {tuple(grid.shape[-2:])}, expected {(h0, w0)}")
    patch = grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, dim)
    return torch.cat((prefix, patch), dim=1).to(dtype)
