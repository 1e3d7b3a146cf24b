"""Cover a field with overlapping tiles on the patch grid, and stitch their patch maps back together."""

from __future__ import annotations

import numpy as np
import torch


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis of length `size` (already padded to the patch grid)."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(y, x, h, w) windows covering a (height, width) field; fields smaller than a tile are one tile."""
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    th, tw = min(tile, height), min(tile, width)
    return [(y, x, th, tw) for y in ys for x in xs]


def pad_to_patch(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Zero-pad a (C, H, W) field on the bottom / right to a multiple of the patch size."""
    h, w = x.shape[-2:]
    return torch.nn.functional.pad(x, (0, (-w) % patch, 0, (-h) % patch))


class Stitcher:
    """Averages overlapping tile patch maps into one (gh, gw, F) map of the whole (padded) field."""

    def __init__(self, grid_hw: tuple[int, int], num_features: int, patch: int):
        self.patch = patch
        self.sum = np.zeros((*grid_hw, num_features), dtype=np.float32)
        self.count = np.zeros(grid_hw, dtype=np.float32)

    def add(self, y: int, x: int, patches: np.ndarray) -> None:
        """Add a tile's (th, tw, F) patch map whose origin is pixel (y, x) (multiples of the patch)."""
        gy, gx = y // self.patch, x // self.patch
        th, tw = patches.shape[:2]
        self.sum[gy : gy + th, gx : gx + tw] += patches
        self.count[gy : gy + th, gx : gx + tw] += 1

    def result(self) -> np.ndarray:
        """The averaged map; every position must have been covered."""
        if (self.count == 0).any():
            raise RuntimeError("tiles do not cover the field")  # a tiling bug, not bad input
        return self.sum / self.count[..., None]
