"""Strokes the way a person paints them, and the scores of a segmentation against a reference.

`user_strokes` draws a few short lines inside a handful of objects (value 2) and small discs in the
background (value 1): a few hundred labelled pixels, as in an interactive napari session, not the
thousands of random dots that make every feature look good. `foreground_f1` and `object_f1`
(matched objects at IoU >= 0.5) score predictions.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

BACKGROUND, FOREGROUND = 1, 2


def _line(cy: float, cx: float, angle: float, length: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(-(length - 1) / 2, (length - 1) / 2, length)
    ys = np.round(cy + t * np.sin(angle)).astype(np.int64)
    xs = np.round(cx + t * np.cos(angle)).astype(np.int64)
    return ys, xs


def user_strokes(
    objects: np.ndarray,
    n_objects: int = 8,
    n_background: int = 8,
    length: int = 15,
    disc_radius: int = 2,
    margin: int = 1,
    background_gap: int = 4,
    seed: int = 0,
) -> np.ndarray:
    """uint8 strokes for a 2D instance (or boolean) mask: 0 = unlabelled, 1 = background, 2 = object.

    A straight line of about `length` px through the inside of each of `n_objects` random objects
    (pixels at least `margin` px from the object's edge; shorter in small objects), and a disc of
    radius `disc_radius` at each of `n_background` random points at least `background_gap` px from any
    object.
    """
    objects = np.asarray(objects)
    if objects.ndim != 2:
        raise ValueError(f"user_strokes needs a 2D mask, got shape {objects.shape}")
    if objects.dtype == bool:
        objects = ndi.label(objects)[0]
    rng = np.random.default_rng(seed)
    out = np.zeros(objects.shape, np.uint8)
    h, w = objects.shape
    ids = [i for i in np.unique(objects) if i != 0]
    stroked = 0
    for i in rng.permutation(ids):
        if stroked >= n_objects:
            break
        obj = objects == i
        inside = ndi.binary_erosion(obj, iterations=margin) if margin > 0 else obj
        if inside.sum() < 3:
            continue
        dist = ndi.distance_transform_edt(inside)
        cy, cx = np.unravel_index(np.argmax(dist), dist.shape)
        ys, xs = _line(cy, cx, rng.uniform(0, np.pi), length)
        ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        ys, xs = ys[ok], xs[ok]
        keep = inside[ys, xs]
        out[ys[keep], xs[keep]] = FOREGROUND
        stroked += 1
    far = ~ndi.binary_dilation(objects > 0, iterations=background_gap)
    ys, xs = np.nonzero(far)
    if len(ys):
        yy, xx = np.mgrid[-disc_radius : disc_radius + 1, -disc_radius : disc_radius + 1]
        disc = yy**2 + xx**2 <= disc_radius**2
        for k in rng.choice(len(ys), min(n_background, len(ys)), replace=False):
            py, px = ys[k] + yy[disc], xs[k] + xx[disc]
            ok = (py >= 0) & (py < h) & (px >= 0) & (px < w)
            py, px = py[ok], px[ok]
            sel = far[py, px]
            out[py[sel], px[sel]] = BACKGROUND
    return out


def foreground_f1(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice / F1 of two boolean masks (1.0 when both are empty)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    total = float(pred.sum() + truth.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(pred, truth).sum()) / total


def object_f1(pred: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> float:
    """F1 of matched objects: a predicted and a true instance match when their IoU >= `iou` (>= 0.5
    makes matches unique). Inputs are instance label images (0 = background) of equal shape."""
    if iou < 0.5:
        raise ValueError(f"object_f1 needs iou >= 0.5 for unique matches, got {iou}")
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and reference {truth.shape} differ in shape")
    _, p = np.unique(pred, return_inverse=True)
    _, t = np.unique(truth, return_inverse=True)
    p, t = p.ravel(), t.ravel()
    np_, nt = p.max() + 1, t.max() + 1
    inter = np.bincount(p * nt + t, minlength=np_ * nt).reshape(np_, nt)
    area_p, area_t = inter.sum(1), inter.sum(0)
    p_bg, t_bg = int(pred.min() == 0) if pred.size else 0, int(truth.min() == 0) if truth.size else 0
    inter = inter[p_bg:, t_bg:]
    union = area_p[p_bg:, None] + area_t[None, t_bg:] - inter
    matched = int(((inter / np.maximum(union, 1)) >= iou).sum())
    n_pred, n_true = inter.shape
    return 1.0 if n_pred + n_true == 0 else 2.0 * matched / (n_pred + n_true)
