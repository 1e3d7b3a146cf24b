"""Pool patch features into one vector per object of a labels image.

`mask` averages the patch features under each object's pixels (nearest-neighbour upsampling of the
patch map, computed as area weights without materialising it); `mask_bilinear` upsamples the map
bilinearly (patch centres at (i + 0.5) * patch) before averaging. Both are one sparse matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse


@dataclass
class Objects:
    """The objects of a labels image: label values, pixel counts and centroids (y, x)."""

    ids: np.ndarray
    area: np.ndarray
    centroid: np.ndarray
    inverse: np.ndarray  # per foreground pixel: index into ids
    pixels: np.ndarray  # (n_fg, 2) y, x of foreground pixels


def find_objects(labels: np.ndarray) -> Objects:
    """Objects of a (H, W) integer labels image (0 is background)."""
    ys, xs = np.nonzero(labels)
    values = labels[ys, xs]
    ids, inverse, area = np.unique(values, return_inverse=True, return_counts=True)
    cy = np.bincount(inverse, weights=ys, minlength=len(ids)) / np.maximum(area, 1)
    cx = np.bincount(inverse, weights=xs, minlength=len(ids)) / np.maximum(area, 1)
    return Objects(ids, area, np.stack([cy, cx], axis=1), inverse, np.stack([ys, xs], axis=1))


def pooling_weights(
    objects: Objects, grid_hw: tuple[int, int], patch: int, mode: str = "mask"
) -> sparse.csr_matrix:
    """(n_objects, gh * gw) row-stochastic weights: pooled = weights @ patch_map.reshape(-1, F)."""
    gh, gw = grid_hw
    ys, xs = objects.pixels[:, 0], objects.pixels[:, 1]
    n = len(objects.ids)
    if mode == "mask":
        cols = (ys // patch) * gw + xs // patch
        rows, vals = objects.inverse, np.ones(len(ys), dtype=np.float64)
    elif mode == "mask_bilinear":
        fy = np.clip((ys + 0.5) / patch - 0.5, 0, gh - 1)
        fx = np.clip((xs + 0.5) / patch - 0.5, 0, gw - 1)
        y0, x0 = np.floor(fy).astype(np.int64), np.floor(fx).astype(np.int64)
        y1, x1 = np.minimum(y0 + 1, gh - 1), np.minimum(x0 + 1, gw - 1)
        wy, wx = fy - y0, fx - x0
        cols = np.concatenate([y0 * gw + x0, y0 * gw + x1, y1 * gw + x0, y1 * gw + x1])
        vals = np.concatenate([(1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx])
        rows = np.tile(objects.inverse, 4)
    else:
        raise ValueError(f"mask pooling mode must be 'mask' or 'mask_bilinear', got {mode!r}")
    weights = sparse.csr_matrix((vals, (rows, cols)), shape=(n, gh * gw))
    weights.sum_duplicates()
    return sparse.diags(1.0 / np.maximum(objects.area, 1)) @ weights


def pool_objects(patch_map: np.ndarray, objects: Objects, patch: int, mode: str = "mask") -> np.ndarray:
    """(n_objects, F) float32 object vectors from a (gh, gw, F) patch map."""
    gh, gw, f = patch_map.shape
    weights = pooling_weights(objects, (gh, gw), patch, mode)
    return np.asarray(weights @ patch_map.reshape(gh * gw, f), dtype=np.float32)
