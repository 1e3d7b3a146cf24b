"""End to end on real nuclei (stardist's 2D test image, offline): scribbles from the real mask -> F1."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi

from cellfm.models import VisionTransformer, ViTArch
from cellfm.segment import FeatureCache, ScribbleSegmenter, cluster_patches, pca_rgb, similarity_map
from cellfm.segment.baselines import filter_forest
from cellfm.segment.strokes import foreground_f1, user_strokes

F1_THRESHOLD = 0.7  # tiny random-init backbone + filters, 8 short strokes in nuclei + 8 background discs


def tiny() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(ViTArch(embed_dim=64, depth=2, num_heads=2, patch_size=8, in_chans=1))


def real_nuclei() -> tuple[np.ndarray, np.ndarray]:
    from stardist.data import test_image_nuclei_2d

    img, mask = test_image_nuclei_2d(return_mask=True)
    return img[:256, :256], mask[:256, :256]


def test_real_nuclei_scribbles_to_labels(tmp_path):
    img, lab = real_nuclei()
    fg = lab > 0
    scrib = user_strokes(lab, seed=1)
    assert (scrib > 0).sum() < 400  # a few strokes, not the answer
    cache = FeatureCache(directory=tmp_path / "cache")
    seg = ScribbleSegmenter(tiny(), cache=cache).fit(img, scrib)
    labels = seg.predict(img, min_size=10)
    score = foreground_f1(labels == 2, fg)
    assert score > F1_THRESHOLD, score
    # never clearly worse than the ilastik-style filter forest from the same strokes
    assert score >= foreground_f1(filter_forest(img, scrib) == 2, fg) - 0.03
    inst = seg.predict_instances(img, min_distance=4, min_size=10)
    n_true = ndi.label(fg)[1]
    assert 0.5 * n_true < inst.max() < 2 * n_true
    # features persisted on disk: a fresh segmenter with a fresh in-memory cache reads them back
    again = ScribbleSegmenter(tiny(), cache=FeatureCache(directory=tmp_path / "cache")).fit(img, scrib)
    assert again.extractor.cache.hits == 1 and again.extractor.cache.misses == 0
    np.testing.assert_array_equal(again.predict(img, min_size=10), labels)


def test_explore_on_real_nuclei():
    img, lab = real_nuclei()
    fg = lab > 0
    model = tiny()
    ys, xs = np.nonzero(ndi.binary_erosion(fg, iterations=3))
    sim = similarity_map(model, img, [(ys[0], xs[0]), (ys[-1], xs[-1])])
    assert sim.shape == img.shape and sim.max() <= 1.0 + 1e-5
    bg = ~ndi.binary_dilation(fg, iterations=4)
    assert sim[fg].mean() > sim[bg].mean() + 0.05
    clusters = cluster_patches(model, img, 2)
    assert clusters.shape == img.shape and set(np.unique(clusters)) == {1, 2}
    purity = sorted(fg[clusters == k].mean() for k in (1, 2))
    assert purity[0] < 0.1 and purity[1] > 0.4  # one cluster is background, the other mostly nuclei
    rgb = pca_rgb(model, img)
    assert rgb.shape == (*img.shape, 3) and 0 <= rgb.min() and rgb.max() <= 1
