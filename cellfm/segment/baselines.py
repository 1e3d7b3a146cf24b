"""Classical baselines from the same strokes: an ilastik-style filter-bank random forest, and Otsu.

`filter_forest` is what ilastik's pixel classification does by default: per pixel the intensity and
Gaussian, gradient-magnitude and Laplacian-of-Gaussian filters at sigma 1 to 8, a 100-tree random
forest trained on the stroked pixels. `otsu_foreground` needs no strokes at all.
"""

from __future__ import annotations

import numpy as np

from .filters import FilterBank
from .image import ChannelNorm

ILASTIK_SIGMAS = (1.0, 2.0, 4.0, 8.0)


def filter_features(image: np.ndarray, sigmas: tuple[float, ...] = ILASTIK_SIGMAS) -> np.ndarray:
    """(F, H, W) filter bank of a 2D image scaled to [0, 1] by its 1 / 99.8 percentiles."""
    chw = np.asarray(image, np.float32)[None]
    scaled = ChannelNorm.from_stack(chw[None]).scale(chw)
    return FilterBank(tuple(sigmas)).compute(scaled)


def filter_forest(
    image: np.ndarray, strokes: np.ndarray, n_estimators: int = 100, seed: int = 0
) -> np.ndarray:
    """(H, W) labels with the strokes' class values from a random forest on `filter_features`."""
    from sklearn.ensemble import RandomForestClassifier

    feats = filter_features(image)
    ys, xs = np.nonzero(strokes)
    forest = RandomForestClassifier(n_estimators, n_jobs=1, random_state=seed)
    forest.fit(feats[:, ys, xs].T, strokes[ys, xs])
    flat = feats.reshape(len(feats), -1).T
    return forest.predict(flat).reshape(strokes.shape).astype(strokes.dtype)


def otsu_foreground(image: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Boolean mask of pixels above Otsu's threshold of the Gaussian-smoothed image."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    smooth = ndi.gaussian_filter(np.asarray(image, np.float32), sigma)
    return smooth > threshold_otsu(smooth)
