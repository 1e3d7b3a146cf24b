"""Label clean-up (small objects) and instance splitting (connected components or watershed)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

INSTANCE_METHODS = ("components", "watershed")


def remove_small(labels: np.ndarray, min_size: int, background: int) -> np.ndarray:
    """Connected pieces of any non-background class smaller than `min_size` pixels become `background`."""
    if min_size <= 1:
        return labels
    out = labels.copy()
    for value in np.unique(labels):
        if value == background:
            continue
        comp, n = ndi.label(labels == value)
        if n == 0:
            continue
        sizes = np.bincount(comp.ravel())
        small = sizes < min_size
        small[0] = False
        out[small[comp]] = background
    return out


def instances(
    mask: np.ndarray, method: str = "watershed", min_distance: int = 5, min_size: int = 0
) -> np.ndarray:
    """Instance labels (int32, 0 = background) of a boolean foreground mask of any dimension.

    "components" labels connected pieces; "watershed" splits touching objects at the ridges of the
    distance transform, seeded by its maxima at least `min_distance` pixels apart.
    """
    if method not in INSTANCE_METHODS:
        raise ValueError(f"unknown instance method {method!r}; choose one of {INSTANCE_METHODS}")
    mask = np.asarray(mask, bool)
    if method == "components":
        lab, _ = ndi.label(mask)
    else:
        from skimage.feature import peak_local_max
        from skimage.segmentation import watershed

        dist = ndi.distance_transform_edt(mask)
        comp, _ = ndi.label(mask)
        peaks = peak_local_max(dist, min_distance=max(1, min_distance), labels=comp, exclude_border=False)
        markers = np.zeros(mask.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        lab = watershed(-dist, markers, mask=mask)
        # components without a peak (tiny or flat) keep a label of their own
        missing = (lab == 0) & mask
        if missing.any():
            extra, _ = ndi.label(missing)
            lab = np.where(missing, extra + lab.max(), lab)
    lab = lab.astype(np.int32)
    if min_size > 1:
        sizes = np.bincount(lab.ravel())
        small = sizes < min_size
        small[0] = False
        lab[small[lab]] = 0
        kept = np.unique(lab[lab > 0])
        lut = np.zeros(sizes.size, np.int32)
        lut[kept] = np.arange(1, kept.size + 1)
        lab = lut[lab]
    return lab
