"""Fast prediction paths: coarse-to-fine forest prediction, a loaded forest on compiled trees, fast PCA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cellfm.models import VisionTransformer, ViTArch
from cellfm.segment import ScribbleSegmenter
from cellfm.segment.classifier import ForestClassifier, compiled_trees
from cellfm.segment.projection import PatchProjection
from cellfm.segment.refine import coarse_to_fine, grid
from cellfm.segment.strokes import FOREGROUND, user_strokes


def stardist_crop(size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    from stardist.data import test_image_nuclei_2d

    img, lab = test_image_nuclei_2d(return_mask=True)
    return img[:size, :size], lab[:size, :size]


def tiny() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(ViTArch(embed_dim=32, depth=1, num_heads=2, patch_size=8, in_chans=1))


def test_coarse_to_fine_matches_exact_prediction_on_real_nuclei():
    img, lab = stardist_crop()
    seg = ScribbleSegmenter(tiny(), select=False, coarse_to_fine=False).fit(img, user_strokes(lab, seed=0))
    exact_labels, exact = seg.predict(img, return_proba=True)
    feats = seg._features(img[None].astype(np.float32), None, 0, 1)
    calls = []

    def predict(ys, xs):
        calls.append(len(ys))
        return seg._proba_at(feats, ys, xs)

    proba, fraction = coarse_to_fine(predict, img.shape, 2)
    assert fraction == pytest.approx(sum(calls) / img.size) and fraction < 0.5  # far fewer pixels
    labels = seg.classes_[proba.argmax(0)]
    assert (labels != exact_labels).sum() <= 3  # the same segmentation, to a few pixels in 65k
    gy, gx = grid(256, 4), grid(256, 4)
    np.testing.assert_allclose(proba[:, gy][:, :, gx], exact[:, gy][:, :, gx], atol=1e-6)  # exact there
    seg.coarse_to_fine = True  # the segmenter's own switch takes the same path
    assert (seg.predict(img) != exact_labels).sum() <= 3


def test_coarse_to_fine_refines_every_boundary_and_interpolates_elsewhere():
    yy, xx = np.mgrid[:97, :130]
    disc = (yy - 40) ** 2 + (xx - 70) ** 2 < 25**2

    def predict(ys, xs):
        p = disc[ys, xs].astype(np.float32)
        return np.stack([1 - p, p], 1)

    proba, fraction = coarse_to_fine(predict, disc.shape, 2, strides=(8, 4, 2, 1))
    np.testing.assert_array_equal(proba.argmax(0) == 1, disc)  # odd sizes, last row / column included
    assert fraction < 0.25
    with pytest.raises(ValueError, match="decrease to 1"):
        coarse_to_fine(predict, disc.shape, 2, strides=(4, 2))
    ring = ((yy - 40) ** 2 + (xx - 70) ** 2 < 12**2).astype(int) + disc  # three classes: 0, 1, 2

    def predict3(ys, xs):
        return np.eye(3, dtype=np.float32)[ring[ys, xs]]

    three, _ = coarse_to_fine(predict3, ring.shape, 3)
    np.testing.assert_array_equal(three.argmax(0), ring)
    one_row, _ = coarse_to_fine(predict, (1, 130), 2)  # a 1-pixel-high slice still works
    np.testing.assert_array_equal(one_row.argmax(0)[0], disc[0])


def test_loaded_forest_predicts_on_compiled_trees_as_the_fitted_one():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 6)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] ** 2 > 0.5).astype(int) + (X[:, 2] > 1)
    fitted = ForestClassifier(n_estimators=9).fit(X, y)
    test = rng.normal(size=(5000, 6)).astype(np.float32)
    loaded = ForestClassifier.from_state(fitted.state())
    np.testing.assert_allclose(loaded.predict_proba(test), fitted.predict_proba(test), atol=1e-6)
    assert len(loaded._trees) == 9  # the compiled path, not the numpy walk
    np.testing.assert_allclose(loaded._walk(test), fitted.predict_proba(test), atol=1e-6)
    assert len(compiled_trees(fitted.state(), 6)) == 9


def test_projection_equals_principal_components_by_svd():
    rng = np.random.default_rng(0)
    grid_ = rng.normal(size=(12, 3)) @ rng.normal(size=(3, 20 * 30)) + rng.normal(0, 0.1, (12, 600))
    grid_ = grid_.reshape(12, 20, 30).astype(np.float32)
    proj = PatchProjection.fit([grid_], 4)
    rows = grid_.reshape(12, -1).T.astype(np.float64)
    _, sv, vt = np.linalg.svd(rows - rows.mean(0), full_matrices=False)
    ref = vt[:4] / (sv[:4, None] / np.sqrt(len(rows) - 1))
    signs = np.sign((proj.components * ref).sum(1))
    np.testing.assert_allclose(proj.components * signs[:, None], ref, rtol=1e-3, atol=1e-4)
    out = proj.apply(grid_).reshape(4, -1)
    np.testing.assert_allclose(out.std(1, ddof=1), 1.0, atol=1e-3)  # unit-variance components


def test_segmenter_save_load_keeps_coarse_to_fine(tmp_path):
    img, lab = stardist_crop()
    seg = ScribbleSegmenter(tiny(), select=False).fit(img, user_strokes(lab, seed=1))
    assert seg.coarse_to_fine
    loaded = ScribbleSegmenter.load(seg.save(tmp_path / "seg"), tiny())
    assert loaded.coarse_to_fine
    np.testing.assert_array_equal(loaded.predict(img), seg.predict(img))
    assert (seg.predict(img) == FOREGROUND).any()


def test_selection_ties_keep_the_backbone_and_filters_win_only_when_better(monkeypatch):
    import cellfm.segment.selection as selection
    from cellfm.segment.segmenter import FILTERS_ONLY, WITH_BACKBONE

    img, lab = stardist_crop(128)
    strokes = user_strokes(lab, seed=0)
    monkeypatch.setattr(selection, "stroke_score", lambda X, y, groups, seed=0: 1.0)  # a tie
    seg = ScribbleSegmenter(tiny()).fit(img, strokes)
    assert seg.feature_set == WITH_BACKBONE and seg.selection_scores == {
        WITH_BACKBONE: 1.0,
        FILTERS_ONLY: 1.0,
    }
    assert seg._features(img[None].astype(np.float32), None, 0, 1).num_patch_features == 16
    n_filters = seg._features(img[None].astype(np.float32), None, 0, 1).num_filter_features
    monkeypatch.setattr(
        selection, "stroke_score", lambda X, y, groups, seed=0: 1.0 if X.shape[1] == n_filters else 0.9
    )
    assert ScribbleSegmenter(tiny()).fit(img, strokes).feature_set == FILTERS_ONLY
