"""Near-duplicate detection by cosine similarity with a faiss index (exact for small sets, HNSW above).

Copy detection uses a layout-aware descriptor (patch features pooled on a small grid, centred on the
collection mean): the pooled CLS token of two different crops of the same kind of image is often as
similar as that of an image and its noisy copy, the pooled layout is not (README "Curation")."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32 C-contiguous for faiss."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def build_index(x: np.ndarray, exact_max: int = 20000, seed: int = 0):
    """A faiss inner-product index over unit rows: flat (exact) up to `exact_max` rows, HNSW above."""
    import faiss

    d = x.shape[1]
    if len(x) <= exact_max:
        index = faiss.IndexFlatIP(d)
    else:
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 64
    index.add(x)
    return index


def neighbours(
    x: np.ndarray, k: int, exact_max: int = 20000, block: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices) of the `k` nearest rows of every row of unit-row matrix `x` (self included)."""
    index = build_index(x, exact_max)
    k = min(k, len(x))
    sims, ids = [], []
    for start in range(0, len(x), block):  # bounded memory: the query block's k-NN, never n x n
        s, i = index.search(x[start : start + block], k)
        sims.append(s)
        ids.append(i)
    return np.concatenate(sims), np.concatenate(ids)


def _find(parent: np.ndarray, i: int) -> int:
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        parent[i], i = root, parent[i]
    return root


def duplicate_groups(
    x: np.ndarray, threshold: float, k: int = 16, exact_max: int = 20000,
    verify: Callable[[int, int], bool] | None = None,
) -> tuple[np.ndarray, int]:  # fmt: skip
    """For each row the row it duplicates (the lowest index of its group) or -1; and the pairs found.

    Pairs with cosine >= `threshold` among each row's `k` nearest neighbours (and, with `verify`, for
    which `verify(i, j)` holds: the candidates of a finer test) are joined (union-find), so a group is
    the connected component of the near-duplicate graph.
    """
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=np.int64), 0
    sims, ids = neighbours(normalise(x), k, exact_max)
    parent = np.arange(n)
    pairs = 0
    seen: set[tuple[int, int]] = set()
    for i in range(n):
        for s, j in zip(sims[i], ids[i]):
            if j < 0 or j == i or s < threshold:
                continue
            pair = (min(i, int(j)), max(i, int(j)))
            if pair in seen:  # each pair once, whichever row found it
                continue
            seen.add(pair)
            if verify is not None and not verify(*pair):
                continue
            pairs += 1
            a, b = _find(parent, i), _find(parent, int(j))
            if a != b:
                parent[max(a, b)] = min(a, b)  # the root is the lowest index: the first row kept
    roots = np.array([_find(parent, i) for i in range(n)])
    return np.where(roots == np.arange(n), -1, roots), pairs


def pooled_descriptor(patch_map: np.ndarray, grid: int) -> np.ndarray:
    """A (gh, gw, F) patch-feature map averaged over a grid x grid layout, flattened (grid*grid*F,)."""
    gh, gw, f = patch_map.shape
    ys = np.linspace(0, gh, grid + 1).round().astype(int)
    xs = np.linspace(0, gw, grid + 1).round().astype(int)
    out = np.zeros((grid, grid, f), dtype=np.float32)
    for a in range(grid):
        for b in range(grid):
            cell = patch_map[ys[a] : max(ys[a + 1], ys[a] + 1), xs[b] : max(xs[b + 1], xs[b] + 1)]
            out[a, b] = cell.reshape(-1, f).mean(0)
    return out.ravel()
