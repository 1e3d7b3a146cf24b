"""Balanced sampling across a cluster hierarchy (Vo et al. 2024), per-row weights, metadata caps, entropy."""

from __future__ import annotations

import numpy as np

from .kmeans import Hierarchy


def water_fill(sizes: np.ndarray, budget: float) -> np.ndarray:
    """Split `budget` evenly over clusters of `sizes`; a cluster smaller than its share gives all it has
    and the rest goes to the others (the paper's balanced sampling step). Real-valued."""
    sizes = np.asarray(sizes, dtype=np.float64)
    alloc = np.zeros_like(sizes)
    open_ = sizes > 0
    left = min(float(budget), float(sizes.sum()))
    while left > 1e-9 and open_.any():
        share = left / open_.sum()
        room = sizes - alloc
        full = open_ & (room <= share)
        if not full.any():
            alloc[open_] += share
            break
        alloc[full] = sizes[full]
        left -= room[full].sum()
        open_ &= ~full
    return alloc


def balanced_weights(hier: Hierarchy, target: float) -> np.ndarray:
    """Each row's probability of being in a `target`-sized balanced draw: the budget is water-filled over
    the top clusters, within each over its children, down to the points of the finest clusters."""
    n = len(hier.labels[0])
    leaf = hier.labels[0]
    # Parent of every cluster at each level (level l cluster -> level l + 1 cluster).
    parents = []
    for lv in range(hier.depth - 1):
        up = np.zeros(hier.labels[lv].max() + 1, dtype=np.int64)
        up[hier.labels[lv]] = hier.labels[lv + 1]
        parents.append(up)
    top = hier.depth - 1
    sizes_at = [np.bincount(lab, minlength=lab.max() + 1) for lab in hier.labels]
    budget = {top: water_fill(sizes_at[top], target)}
    for lv in range(top - 1, -1, -1):
        alloc = np.zeros(len(sizes_at[lv]))
        for parent, b in enumerate(budget[lv + 1]):
            children = np.flatnonzero(parents[lv] == parent)
            alloc[children] = water_fill(sizes_at[lv][children], b)
        budget[lv] = alloc
    per_leaf = budget[0] / np.maximum(sizes_at[0], 1)
    return np.clip(per_leaf[leaf], 0.0, 1.0) if n else np.zeros(0)


def normalised_entropy(counts: np.ndarray) -> float:
    """Shannon entropy of a cluster-size distribution divided by log(number of clusters) (1 = flat)."""
    c = np.asarray(counts, dtype=np.float64)
    c = c[c > 0]
    if len(c) <= 1:
        return 1.0
    p = c / c.sum()
    return float(-(p * np.log(p)).sum() / np.log(len(c)))


def cap_rows(matches: np.ndarray, kept: np.ndarray, max_fraction: float, seed: int = 0) -> np.ndarray:
    """Rows (of those `kept`) to drop so that rows `matches` are at most `max_fraction` of the kept set."""
    idx = np.flatnonzero(matches & kept)
    others = int((kept & ~matches).sum())
    # m / (m + others) <= f  <=>  m <= f * others / (1 - f)
    allowed = len(idx) if max_fraction >= 1 else int(np.floor(max_fraction * others / (1 - max_fraction)))
    if len(idx) <= allowed:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(idx)[: len(idx) - allowed])
