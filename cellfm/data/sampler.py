"""Where to crop: foreground masks from a low-resolution level, crop positions, object centroids."""

from __future__ import annotations

import csv

import numpy as np

from cellfm.data.checked_read import check_finite
from cellfm.data.stores import Image


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut maximising between-class variance of a histogram."""
    values = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return hi
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def mask_level(image: Image, max_size: int = 512) -> int:
    """The finest level whose longer side is at most `max_size` (else the coarsest)."""
    levels = range(len(image.levels))
    for i in levels:
        if max(image.level_shape(i)[1:]) <= max_size:
            return i
    return len(image.levels) - 1


def foreground_mask(
    image: Image, threshold: str | float = "otsu", max_size: int = 512, nan_policy: str = "error"
) -> tuple[np.ndarray, float]:
    """Boolean mask at a cheap level and its scale to the image's chosen level.

    Each channel is scaled to [0, 1] by its own 1st-99.9th percentile range, the channels' maximum is
    thresholded by Otsu (``"otsu"``) or by a fixed fraction in [0, 1].
    """
    level = mask_level(image, max_size)
    plane = check_finite(
        image.read_full(level).astype(np.float32), image.source, nan_policy, f"level {level}"
    )
    lo = np.percentile(plane, 1.0, axis=(1, 2), keepdims=True)
    hi = np.percentile(plane, 99.9, axis=(1, 2), keepdims=True)
    signal = ((plane - lo) / np.maximum(hi - lo, 1e-6)).clip(0, 1).max(axis=0)
    cut = otsu_threshold(signal) if threshold == "otsu" else float(threshold)
    mask = signal > cut
    # An empty-looking field gives a meaningless Otsu cut: require some contrast.
    if threshold == "otsu" and float(np.ptp(plane.max(axis=0))) == 0:
        mask[:] = False
    scale = image.level_shape()[1] / plane.shape[1]
    return mask, scale


def crop_positions(
    mask: np.ndarray, scale: float, crop: int, image_hw: tuple[int, int], min_fraction: float
) -> np.ndarray:
    """Top-left mask coordinates of crops whose foreground fraction is at least `min_fraction`."""
    h, w = image_hw
    k = max(1, int(round(crop / scale)))
    mh, mw = mask.shape
    if k > mh or k > mw:
        return np.zeros((0, 2), dtype=np.int64)
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    box = integral[k:, k:] - integral[:-k, k:] - integral[k:, :-k] + integral[:-k, :-k]
    ok = box >= min_fraction * k * k
    # Keep positions whose full-resolution crop fits inside the image.
    ok[int((h - crop) / scale) + 1 :, :] = False
    ok[:, int((w - crop) / scale) + 1 :] = False
    return np.argwhere(ok)


def to_full_res(
    pos: np.ndarray, scale: float, crop: int, image_hw: tuple[int, int], rng: np.random.Generator
) -> tuple[int, int]:
    """A full-resolution top-left for a mask position, jittered within one mask pixel."""
    jitter = rng.integers(0, max(1, int(scale)), size=2)
    y = int(min(pos[0] * scale + jitter[0], image_hw[0] - crop))
    x = int(min(pos[1] * scale + jitter[1], image_hw[1] - crop))
    return max(0, y), max(0, x)


def label_centroids(labels: Image) -> list[tuple[int, float, float]]:
    """(label id, y, x) centroids of every object in a label image, in that image's level-0 pixels."""
    plane = labels.read_full(0)[0]
    if plane.dtype.kind not in "iu":
        raise ValueError(f"{labels.source}: label image has dtype {plane.dtype}, expected integers")
    flat = plane.ravel().astype(np.int64)
    if flat.size and flat.min() < 0:
        raise ValueError(f"{labels.source}: negative label values")
    counts = np.bincount(flat)
    ys, xs = np.indices(plane.shape)
    sy = np.bincount(flat, weights=ys.ravel(), minlength=counts.size)
    sx = np.bincount(flat, weights=xs.ravel(), minlength=counts.size)
    ids = np.nonzero(counts)[0]
    ids = ids[ids > 0]
    return [(int(i), float(sy[i] / counts[i]), float(sx[i] / counts[i])) for i in ids]


def csv_centroids(path: str) -> dict[tuple[str, str, str], list[tuple[int, float, float]]]:
    """Centroids from a CSV with columns y, x and optional plate, well, field, cell_id."""
    out: dict[tuple[str, str, str], list[tuple[int, float, float]]] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or [])
        if not {"y", "x"} <= cols:
            raise ValueError(f"{path}: centroid CSV needs columns 'y' and 'x'; has {sorted(cols)}")
        for i, row in enumerate(reader, start=2):
            key = (row.get("plate", ""), (row.get("well") or "").replace("/", ""), row.get("field", ""))
            try:
                cell = int(row["cell_id"]) if row.get("cell_id") else i - 1
                out.setdefault(key, []).append((cell, float(row["y"]), float(row["x"])))
            except ValueError as err:
                raise ValueError(f"{path}:{i}: bad centroid row {row} ({err})") from err
    return out


def centred_window(cy: float, cx: float, crop: int, image_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Top-left (y, x) of a crop centred at (cy, cx) clipped to the image, and the padding (py, px) needed."""
    h, w = image_hw
    y = int(round(cy - crop / 2))
    x = int(round(cx - crop / 2))
    y = min(max(0, y), max(0, h - crop))
    x = min(max(0, x), max(0, w - crop))
    return y, x, max(0, crop - h), max(0, crop - w)
