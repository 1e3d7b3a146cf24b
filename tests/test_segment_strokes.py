"""Sparse user-like strokes, matched-object F1, leave-one-stroke-out selection, and the classical baselines."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from cellfm.segment.baselines import filter_forest, otsu_foreground
from cellfm.segment.selection import choose_columns, stroke_groups
from cellfm.segment.strokes import foreground_f1, object_f1, user_strokes


def stardist_crop(size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    from stardist.data import test_image_nuclei_2d

    img, lab = test_image_nuclei_2d(return_mask=True)
    return img[:size, :size], lab[:size, :size]


def test_user_strokes_are_short_lines_in_objects_and_discs_outside():
    _, lab = stardist_crop()
    s = user_strokes(lab, n_objects=8, n_background=8, seed=3)
    fg, bg = s == 2, s == 1
    assert 8 * 5 <= fg.sum() <= 8 * 15 and 8 * 9 <= bg.sum() <= 8 * 13  # a few hundred pixels in all
    assert np.all(ndi.binary_erosion(lab > 0)[fg])  # inside objects, off their edges
    assert not np.any(ndi.binary_dilation(lab > 0, iterations=4)[bg])  # well away from any object
    assert len(np.unique(lab[fg])) == 8 and ndi.label(bg)[1] == 8
    assert not np.array_equal(s, user_strokes(lab, seed=4))
    with pytest.raises(ValueError, match="2D mask"):
        user_strokes(np.zeros((2, 8, 8), int))


def test_object_f1_counts_matches_at_iou_half():
    truth = np.zeros((20, 40), int)
    truth[2:8, 2:8], truth[2:8, 12:18], truth[12:18, 2:8] = 1, 2, 3
    assert object_f1(truth, truth) == 1.0
    assert object_f1(np.where(truth > 0, 7 - truth, 0), truth) == 1.0  # label values do not matter
    merged = truth.copy()
    merged[2:8, 8:12] = 1
    merged[merged == 2] = 1  # objects 1 and 2 merged: IoU < 0.5 with both
    assert object_f1(merged, truth) == pytest.approx(2 * 1 / (2 + 3))
    assert object_f1(np.zeros_like(truth), truth) == 0.0 and object_f1(truth * 0, truth * 0) == 1.0
    assert foreground_f1(merged > 0, truth > 0) == pytest.approx(2 * 108 / (132 + 108))
    with pytest.raises(ValueError, match="iou >= 0.5"):
        object_f1(truth, truth, iou=0.3)


def test_leave_one_stroke_out_prefers_features_that_generalise():
    _, lab = stardist_crop()
    s = user_strokes(lab, seed=0)
    ys, xs = np.nonzero(s)
    picks = {0: (ys, xs)}
    groups = stroke_groups(s[None], picks)
    assert len(np.unique(groups)) == 16  # 8 lines + 8 discs
    rng = np.random.default_rng(0)
    y = s[ys, xs] - 1
    signal = y[:, None] + rng.normal(0, 0.3, (len(y), 1))
    stroke_id = rng.permutation(groups.max() + 1)[groups][:, None] + rng.normal(
        0, 0.01, (len(y), 1)
    )  # per stroke
    X = np.hstack([stroke_id, signal])
    best, scores = choose_columns(X, y, groups, {"memorise": np.array([0]), "signal": np.array([1])})
    assert best == "signal" and scores["signal"] > scores["memorise"] + 0.2, scores
    # ties go to the first candidate
    best, _ = choose_columns(X, y, groups, {"a": np.array([1]), "b": np.array([0, 1])})
    assert best == "a"


def test_baselines_on_real_nuclei():
    img, lab = stardist_crop(192)
    s = user_strokes(lab, seed=0)
    pred = filter_forest(img, s, n_estimators=30)
    assert pred.shape == img.shape and set(np.unique(pred)) <= {1, 2}
    assert foreground_f1(pred == 2, lab > 0) > 0.75
    assert otsu_foreground(img).dtype == bool
