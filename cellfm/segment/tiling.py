"""Overlapping tiles on the patch grid and the bilinear patch-to-pixel mapping shared by all consumers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tiling:
    """Tiles of `tile` px overlapping by `overlap` px (both rounded down to whole patches).

    Each patch takes its feature from the tile where it sits farthest from a cut, so seams fall in
    the middle of overlaps; `batch_size` tiles run through the backbone at once (bounds memory).
    """

    tile: int = 518
    overlap: int = 56
    batch_size: int = 4

    def __post_init__(self):
        if self.tile <= 0 or self.overlap < 0 or self.overlap >= self.tile or self.batch_size < 1:
            raise ValueError(
                f"invalid tiling tile={self.tile}, overlap={self.overlap}, batch_size={self.batch_size}: "
                f"need tile > overlap >= 0 and batch_size >= 1"
            )

    def in_patches(self, patch_size: int) -> tuple[int, int]:
        t = max(1, self.tile // patch_size)
        return t, min(self.overlap // patch_size, t - 1)

    def to_dict(self) -> dict:
        return {"tile": self.tile, "overlap": self.overlap}


def tile_starts(n: int, t: int, overlap: int) -> list[int]:
    """Start indices of tiles of length `t` covering [0, n) with at least `overlap` shared cells."""
    if n <= t:
        return [0]
    step = max(1, t - overlap)
    starts = list(range(0, n - t, step)) + [n - t]
    return sorted(set(starts))


def owned_ranges(starts: list[int], t: int, n: int) -> list[tuple[int, int]]:
    """The [a, b) range each tile writes: boundaries at the middle of each overlap."""
    bounds = [0] + [(starts[i + 1] + starts[i] + t) // 2 for i in range(len(starts) - 1)] + [n]
    return [(bounds[i], bounds[i + 1]) for i in range(len(starts))]


def bilinear_weights(coords: np.ndarray, n_in: int, scale: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights for pixels `coords` on an `n_in` grid upsampled `scale` times.

    Matches ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` to size n_in*scale.
    """
    src = (np.asarray(coords, np.float64) + 0.5) / scale - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = (src - i0).astype(np.float32)
    return i0, i1, lam


def upsample_rows(grid: np.ndarray, rows: tuple[int, int], width: int, scale: int) -> np.ndarray:
    """Bilinear upsampling of a (D, h, w) grid to pixel rows [y0, y1) and columns [0, width)."""
    y0, y1 = rows
    i0, i1, ly = bilinear_weights(np.arange(y0, y1), grid.shape[1], scale)
    j0, j1, lx = bilinear_weights(np.arange(width), grid.shape[2], scale)
    ly = ly[None, :, None]
    r = grid[:, i0] * (1 - ly) + grid[:, i1] * ly
    lx = lx[None, None, :]
    return r[:, :, j0] * (1 - lx) + r[:, :, j1] * lx


def sample_points(grid: np.ndarray, ys: np.ndarray, xs: np.ndarray, scale: int) -> np.ndarray:
    """Bilinear values of a (D, h, w) grid at pixel coordinates -> (N, D), equal to upsample_rows."""
    i0, i1, ly = bilinear_weights(ys, grid.shape[1], scale)
    j0, j1, lx = bilinear_weights(xs, grid.shape[2], scale)
    top = grid[:, i0, j0] * (1 - lx) + grid[:, i0, j1] * lx
    bottom = grid[:, i1, j0] * (1 - lx) + grid[:, i1, j1] * lx
    return (top * (1 - ly) + bottom * ly).T
