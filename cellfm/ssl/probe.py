"""Quality probe for a backbone: patch-level linear probe (segmentation F1); kNN accuracy lives in
`cellfm.analysis.knn_accuracy`.

The patch probe answers "do the patch tokens separate objects from background?": each patch gets
the label of the majority of its pixels, a logistic regression is fitted on the patch features of
some images and scored (F1 of the foreground class) on others. The same probe on raw pixel values
of each patch is the no-learning baseline.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cellfm.transforms import Normalize

_PERCENTILE, _ZSCORE = Normalize("percentile"), Normalize("zscore", eps=0.01)


def normalise_image(img: np.ndarray) -> torch.Tensor:
    """(H, W) or (C, H, W) -> float32 (C, H, W): what training does to a field (`Normalize`:
    per-channel percentiles 1 / 99.8, then z-score with a 0.01 floor on the standard deviation)."""
    x = torch.from_numpy(np.asarray(img, dtype=np.float32))
    x = x[None] if x.ndim == 2 else x
    return _ZSCORE(_PERCENTILE(x[None]))[0]


@torch.no_grad()
def patch_features(backbone: nn.Module, images: list[np.ndarray], batch_size: int = 8) -> np.ndarray:
    """(N_images, h, w, D) patch tokens of normalised images (sides cropped to the patch size)."""
    p = backbone.patch_size
    xs = []
    for img in images:
        x = normalise_image(img)
        h, w = x.shape[-2] // p * p, x.shape[-1] // p * p
        xs.append(x[:, :h, :w])
    x = torch.stack(xs)
    backbone.eval()
    outs = []
    for i in range(0, len(x), batch_size):
        feats = backbone.get_intermediate_layers(x[i : i + batch_size], 1, reshape=True)[0]
        outs.append(feats.permute(0, 2, 3, 1).float().numpy())
    return np.concatenate(outs)


def patch_labels(masks: list[np.ndarray], patch: int) -> np.ndarray:
    """(N, h, w) majority foreground label of each patch."""
    out = []
    for m in masks:
        m = np.asarray(m) > 0
        h, w = m.shape[0] // patch, m.shape[1] // patch
        frac = m[: h * patch, : w * patch].reshape(h, patch, w, patch).mean(axis=(1, 3))
        out.append(frac >= 0.5)
    return np.stack(out)


def pixel_patches(images: list[np.ndarray], patch: int) -> np.ndarray:
    """(N, h, w, patch*patch) normalised raw pixels of each patch (the no-learning baseline)."""
    out = []
    for img in images:
        x = normalise_image(img)[0].numpy()
        h, w = x.shape[0] // patch, x.shape[1] // patch
        out.append(
            x[: h * patch, : w * patch].reshape(h, patch, w, patch).transpose(0, 2, 1, 3).reshape(h, w, -1)
        )
    return np.stack(out)


def linear_probe_f1(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, seed: int = 0
) -> float:
    """F1 of the positive class for a standardised logistic regression on flattened features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    d = train_x.shape[-1]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1, random_state=seed))
    clf.fit(train_x.reshape(-1, d), train_y.reshape(-1))
    return float(f1_score(test_y.reshape(-1), clf.predict(test_x.reshape(-1, d))))


def patch_probe(
    backbone: nn.Module,
    train_images: list[np.ndarray],
    train_masks: list[np.ndarray],
    test_images: list[np.ndarray],
    test_masks: list[np.ndarray],
) -> dict[str, float]:
    """Patch linear-probe F1 of `backbone` and of raw pixels on the same patches."""
    p = backbone.patch_size
    ytr, yte = patch_labels(train_masks, p), patch_labels(test_masks, p)
    feats = linear_probe_f1(
        patch_features(backbone, train_images), ytr, patch_features(backbone, test_images), yte
    )
    pixels = linear_probe_f1(pixel_patches(train_images, p), ytr, pixel_patches(test_images, p), yte)
    return {"backbone_f1": feats, "raw_pixels_f1": pixels}
