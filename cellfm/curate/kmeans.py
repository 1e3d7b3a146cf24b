"""Hierarchical k-means with resampling-clustering, as described in Vo et al. 2024 ("Automatic Data
Curation for Self-Supervised Learning: A Clustering-Based Approach"), implemented from the paper.

Level 1 clusters the points; level l + 1 clusters the centroids of level l. After each k-means, a few
resampling steps re-fit the centroids on at most r = ceil(n / k) points closest to each centroid, so a
dense concept cannot pull many centroids towards itself: the centroids spread over concepts instead of
following the data's density, which is what makes balanced sampling across clusters balanced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Hierarchy:
    """`labels[l]` is each point's cluster at level l (0 = finest); `centroids[l]` the level's centroids."""

    labels: list[np.ndarray]
    centroids: list[np.ndarray]

    @property
    def depth(self) -> int:
        return len(self.labels)


def default_levels(n: int, depth: int = 2) -> list[int]:
    """Clusters per level, finest first: n^(d/(d+1)), ..., n^(1/(d+1)) (at least one, at most n)."""
    return [max(1, min(n, round(n ** ((depth - lv) / (depth + 1))))) for lv in range(depth)]


def _kmeans(x: np.ndarray, k: int, iters: int, seed: int, init: np.ndarray | None = None) -> np.ndarray:
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=iters, seed=seed, spherical=True, min_points_per_centroid=1,
                      max_points_per_centroid=1 << 30, verbose=False)  # fmt: skip
    km.train(np.ascontiguousarray(x, dtype=np.float32), init_centroids=init)
    return np.asarray(km.centroids, dtype=np.float32)


def assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nearest centroid by inner product, similarity) for every row of `x`."""
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    sims, ids = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return ids[:, 0].astype(np.int64), sims[:, 0]


def resampled_kmeans(x: np.ndarray, k: int, iters: int = 20, steps: int = 2, seed: int = 0) -> np.ndarray:
    """k-means centroids of unit rows `x`, then `steps` resampling-clustering refits (Vo et al.)."""
    k = max(1, min(k, len(x)))
    centroids = _kmeans(x, k, iters, seed)
    r = math.ceil(len(x) / k)
    for step in range(steps):
        labels, sims = assign(x, centroids)
        picked = []
        for c in range(k):
            members = np.flatnonzero(labels == c)
            picked.append(members[np.argsort(-sims[members])[:r]])
        sample = x[np.concatenate(picked)]
        if len(sample) < k:
            break
        centroids = _kmeans(sample, k, iters, seed + step + 1, init=centroids)
    return centroids


def hierarchical_kmeans(
    x: np.ndarray, levels: list[int], iters: int = 20, resample_steps: int = 2, seed: int = 0
) -> Hierarchy:
    """Cluster unit rows `x` with len(levels) levels of k-means; clusters left empty are dropped."""
    from .dedup import normalise

    points = normalise(x)
    labels, centroids = [], []
    below = np.arange(len(points))  # each point's cluster at the level below (identity at the start)
    for depth, k in enumerate(levels):
        cents = resampled_kmeans(points, k, iters, resample_steps, seed + 1000 * depth)
        lab, _ = assign(points, cents)
        used, lab = np.unique(lab, return_inverse=True)  # drop empty clusters, renumber 0..m-1
        cents = cents[used]
        below = lab[below]
        labels.append(below.copy())
        centroids.append(cents)
        points = normalise(cents)
    return Hierarchy(labels, centroids)
