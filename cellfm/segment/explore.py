"""Unsupervised views of patch features: similarity to clicked points, k-means patches, PCA to RGB.

Each function takes a backbone or a `FeatureExtractor` (reuse one to share its cache) and one 2D
image, (H, W) or with a channel axis; outputs are at pixel resolution.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from .features import FeatureExtractor, ImageFeatures
from .image import AUTO, ChannelNorm, to_stack
from .tiling import sample_points, upsample_rows


def as_extractor(model: nn.Module | FeatureExtractor) -> FeatureExtractor:
    return model if isinstance(model, FeatureExtractor) else FeatureExtractor(model, filters=None)


def image_features(
    model: nn.Module | FeatureExtractor, image, channel_axis: int | None | str = AUTO
) -> ImageFeatures:
    """Features of a single 2D image (one slice; pass a slice of a stack)."""
    stack, lead = to_stack(image, channel_axis)
    if len(stack) != 1:
        raise ValueError(
            f"expected one 2D image, got a stack of {len(stack)} slices (stack shape {lead}); pass one slice"
        )
    return as_extractor(model).features(stack[0], ChannelNorm.from_stack(stack))


def _normalized(patch: np.ndarray) -> np.ndarray:
    return patch / np.maximum(np.linalg.norm(patch, axis=0, keepdims=True), 1e-8)


def similarity_map(
    model: nn.Module | FeatureExtractor,
    image,
    points,
    channel_axis: int | None | str = AUTO,
    reduce: str = "max",
) -> np.ndarray:
    """(H, W) cosine similarity of every pixel's patch feature to the features at `points` (N, 2) (y, x).

    Several points combine by "max" (like any of them) or "mean" (like their average feature).
    """
    feats = image_features(model, image, channel_axis)
    pts = np.asarray(points, np.float64).reshape(-1, 2) if len(points) else np.zeros((0, 2))
    h, w = feats.shape
    if len(pts) == 0:
        raise ValueError("points is empty; give at least one (y, x) point")
    if (pts < 0).any() or (pts[:, 0] >= h).any() or (pts[:, 1] >= w).any():
        raise ValueError(f"points must lie inside the {h}x{w} image, got {pts.tolist()}")
    if reduce not in ("max", "mean"):
        raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")
    grid = _normalized(feats.patch)
    p = feats.patch_size
    refs = sample_points(grid, np.round(pts[:, 0]).astype(int), np.round(pts[:, 1]).astype(int), p)
    refs = refs / np.maximum(np.linalg.norm(refs, axis=1, keepdims=True), 1e-8)
    if reduce == "mean":
        refs = refs.mean(0, keepdims=True)
        refs /= max(np.linalg.norm(refs), 1e-8)
    sim = np.tensordot(refs, grid, axes=1)  # (N, h, w)
    sim = sim.max(0, keepdims=True)
    return upsample_rows(sim.astype(np.float32), (0, h), w, p)[0]


def cluster_patches(
    model: nn.Module | FeatureExtractor, image, k: int, channel_axis: int | None | str = AUTO, seed: int = 0
) -> np.ndarray:
    """(H, W) int32 labels 1..k from k-means on the patch features (each patch one label)."""
    from sklearn.cluster import KMeans

    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    feats = image_features(model, image, channel_axis)
    d, gh, gw = feats.patch.shape
    if k > gh * gw:
        raise ValueError(f"k={k} exceeds the number of patches ({gh}x{gw})")
    X = _normalized(feats.patch).reshape(d, -1).T
    lab = KMeans(k, n_init=3, random_state=seed).fit_predict(X).reshape(gh, gw) + 1
    p = feats.patch_size
    h, w = feats.shape
    return lab[np.arange(h) // p][:, np.arange(w) // p].astype(np.int32)


def pca_rgb(model: nn.Module | FeatureExtractor, image, channel_axis: int | None | str = AUTO) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]: the first three principal components of the patch features."""
    from sklearn.decomposition import PCA

    feats = image_features(model, image, channel_axis)
    d, gh, gw = feats.patch.shape
    X = feats.patch.reshape(d, -1).T
    n = min(3, X.shape[0], d)
    comps = PCA(n).fit_transform(X)
    if n < 3:
        comps = np.pad(comps, ((0, 0), (0, 3 - n)))
    lo, hi = np.percentile(comps, 1, axis=0), np.percentile(comps, 99, axis=0)
    comps = np.clip((comps - lo) / np.maximum(hi - lo, 1e-8), 0, 1)
    grid = comps.T.reshape(3, gh, gw).astype(np.float32)
    h, w = feats.shape
    return np.clip(upsample_rows(grid, (0, h), w, feats.patch_size), 0, 1).transpose(1, 2, 0)
