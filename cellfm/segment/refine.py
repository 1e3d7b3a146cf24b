"""Coarse-to-fine prediction: classify a sparse grid, then only the pixels where the answer can change.

A pixel classifier (a forest) costs the same at every pixel, but most pixels of a microscopy image lie
deep inside an object or the background, where the class probabilities hardly vary. `coarse_to_fine`
predicts every `strides[0]`-th pixel, interpolates the probabilities bilinearly on the next finer grid
and predicts exactly there only inside the cells whose corners disagree on the class or are not
confident (max probability below ``1 - tol``); it repeats down to stride 1. Labels match the exact
per-pixel prediction except where a whole structure hides between grid points (smaller than the
first stride) or the probabilities change class without any corner being uncertain; on the benchmark
images that is a few pixels in 10^5 (`tests/test_segment_refine.py`), at a third of the cost or less.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

STRIDES = (4, 2, 1)
TOL = 0.2
Predict = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (ys, xs) -> (N, K) probabilities


def grid(n: int, stride: int) -> np.ndarray:
    """Coordinates 0, stride, 2 * stride, ... and always the last one (n - 1)."""
    return np.unique(np.r_[np.arange(0, n, stride), n - 1])


def _cells(coarse: np.ndarray, fine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each fine coordinate: the coarse cell [coarse[i], coarse[i + 1]] holding it, and its position."""
    if len(coarse) == 1:
        return np.zeros(len(fine), np.int64), np.zeros(len(fine), np.float32)
    i = np.clip(np.searchsorted(coarse, fine, side="right") - 1, 0, len(coarse) - 2)
    lam = (fine - coarse[i]) / (coarse[i + 1] - coarse[i])
    return i, lam.astype(np.float32)


def _interpolate(p: np.ndarray, iy, ly, ix, lx) -> np.ndarray:
    """Bilinear values of a (K, ny, nx) grid at fine positions (cell indices and fractions per axis)."""
    iy1 = np.minimum(iy + 1, p.shape[1] - 1)
    ix1 = np.minimum(ix + 1, p.shape[2] - 1)
    ly, lx = ly[None, :, None], lx[None, None, :]
    top, bottom = p[:, iy], p[:, iy1]
    top = top[:, :, ix] * (1 - lx) + top[:, :, ix1] * lx
    bottom = bottom[:, :, ix] * (1 - lx) + bottom[:, :, ix1] * lx
    return top * (1 - ly) + bottom * ly


def _uncertain_cells(p: np.ndarray, tol: float) -> np.ndarray:
    """(ny - 1, nx - 1) cells (at least (1, 1)) whose four corners disagree or are not all confident."""
    label, conf = p.argmax(0), p.max(0)
    if label.shape[0] == 1:
        label, conf = np.repeat(label, 2, 0), np.repeat(conf, 2, 0)
    if label.shape[1] == 1:
        label, conf = np.repeat(label, 2, 1), np.repeat(conf, 2, 1)
    a, b, c, d = label[:-1, :-1], label[:-1, 1:], label[1:, :-1], label[1:, 1:]
    disagree = (a != b) | (a != c) | (a != d)
    low = np.minimum(np.minimum(conf[:-1, :-1], conf[:-1, 1:]), np.minimum(conf[1:, :-1], conf[1:, 1:]))
    return disagree | (low < 1.0 - tol)


def coarse_to_fine(
    predict: Predict,
    shape: tuple[int, int],
    num_classes: int,
    strides: tuple[int, ...] = STRIDES,
    tol: float = TOL,
) -> tuple[np.ndarray, float]:
    """(K, H, W) float32 probabilities and the fraction of pixels `predict` was called on."""
    if not strides or strides[-1] != 1 or any(a <= b for a, b in zip(strides, strides[1:])):
        raise ValueError(f"strides must decrease to 1, e.g. (4, 2, 1); got {strides}")
    h, w = shape
    gy, gx = grid(h, strides[0]), grid(w, strides[0])
    yy, xx = np.meshgrid(gy, gx, indexing="ij")
    p = predict(yy.ravel(), xx.ravel()).T.reshape(num_classes, len(gy), len(gx)).astype(np.float32)
    calls = p[0].size
    for stride in strides[1:]:
        fy, fx = grid(h, stride), grid(w, stride)
        iy, ly = _cells(gy, fy)
        ix, lx = _cells(gx, fx)
        fine = _interpolate(p, iy, ly, ix, lx)
        todo = _uncertain_cells(p, tol)[np.minimum(iy, len(gy) - 2)][:, np.minimum(ix, len(gx) - 2)]
        todo[np.ix_(np.isin(fy, gy), np.isin(fx, gx))] = False  # known exactly from the coarser level
        ty, tx = np.nonzero(todo)
        if len(ty):
            fine[:, ty, tx] = predict(fy[ty], fx[tx]).T
            calls += len(ty)
        p, gy, gx = fine, fy, fx
    return p, calls / float(h * w)
