"""cellfm.analysis without scanpy: normalisation to controls, well aggregation, metrics, PCA-to-RGB."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellfm.analysis import (
    aggregate_wells,
    average_precision_activity,
    control_mask,
    knn_accuracy,
    linear_probe_accuracy,
    normalize_to_controls,
    pca_rgb,
    phenotypic_activity,
)


def profiles(n_per=40, d=3, seed=0):
    """Two plates; plate P2 is plate P1 scaled by 3 and shifted by 5 (a batch effect)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n_per, d)) @ rng.normal(size=(d, d))
    x = np.concatenate([base, 3 * base + 5]).astype(np.float32)
    ctrl = np.tile(np.arange(n_per) < n_per // 2, 2)
    obs = pd.DataFrame({"plate": ["P1"] * n_per + ["P2"] * n_per, "control": ctrl,
                        "treatment": np.where(ctrl, "DMSO", "drug")})  # fmt: skip
    obs.index = obs.index.astype(str)
    return ad.AnnData(X=x, obs=obs)


def test_standardize_and_mad_hand_computed():
    x = np.array([[1.0], [2.0], [3.0], [10.0], [5.0]], dtype=np.float32)
    a = ad.AnnData(
        X=x, obs=pd.DataFrame({"plate": ["P"] * 5, "control": [1, 1, 1, 1, 0]}, index=list("abcde"))
    )
    a.obs["control"] = a.obs["control"].astype(bool)
    z = normalize_to_controls(a, "standardize")
    mu, sd = 4.0, np.std([1, 2, 3, 10])
    np.testing.assert_allclose(z[:, 0], (x[:, 0] - mu) / sd, rtol=1e-6)
    m = normalize_to_controls(a, "mad")
    # median of controls 2.5, MAD = median(|1.5|, |0.5|, |0.5|, |7.5|) = 1.0
    np.testing.assert_allclose(m[4, 0], (5 - 2.5) / 1.4826, rtol=1e-6)
    assert set(a.obsm) == {"X_standardize", "X_mad"}


@pytest.mark.parametrize("method", ["standardize", "mad", "sphering", "tvn"])
def test_plate_batch_effect_removed(method):
    a = profiles()
    out = normalize_to_controls(a, method, "control")
    np.testing.assert_allclose(out[:40], out[40:], rtol=1e-3, atol=1e-3)  # per-plate: P2 == P1 after
    ctrl = a.obs["control"].to_numpy()
    if method in ("sphering", "tvn"):
        for plate in ("P1", "P2"):
            rows = ctrl & (a.obs["plate"] == plate).to_numpy()
            np.testing.assert_allclose(np.cov(out[rows], rowvar=False), np.eye(3), atol=1e-3)
            np.testing.assert_allclose(out[rows].mean(0), 0, atol=1e-4)


def test_controls_selection_and_errors():
    a = profiles()
    assert control_mask(a).sum() == 40
    assert (control_mask(a, ["treatment=DMSO"]) == a.obs["control"].to_numpy()).all()
    with pytest.raises(ValueError, match=r"no row has treatment == 'PBS' \(values: \['DMSO', 'drug'\]\)"):
        control_mask(a, "treatment=PBS")
    with pytest.raises(KeyError, match="obs has no column 'compound'"):
        control_mask(a, "compound=DMSO")
    a.obs.loc[a.obs["plate"] == "P2", "control"] = False
    with pytest.raises(ValueError, match="plate 'P2': 0 control rows"):
        normalize_to_controls(a, "standardize")


def test_aggregate_wells_mean_and_median():
    x = np.array([[1, 0], [3, 0], [5, 9], [7, 1], [100, 2]], dtype=np.float32)
    obs = pd.DataFrame({"plate": ["P"] * 5, "well": ["A1", "A1", "A2", "A2", "A2"],
                        "treatment": ["DMSO", "DMSO", "d", "d", "d"], "cell_id": list("12345")},
                       index=list("abcde"))  # fmt: skip
    a = ad.AnnData(X=x, obs=obs, obsm={"X_mad": x * 2, "spatial": x})
    mean = aggregate_wells(a, "mean")
    np.testing.assert_allclose(mean.X, [[2, 0], [112 / 3, 4]], rtol=1e-6)
    assert list(mean.obs["treatment"]) == ["DMSO", "d"] and list(mean.obs["n_rows"]) == [2, 3]
    assert "cell_id" not in mean.obs and "spatial" not in mean.obsm
    np.testing.assert_allclose(mean.obsm["X_mad"], mean.X * 2, rtol=1e-6)
    np.testing.assert_allclose(aggregate_wells(a, "median").X, [[2, 0], [7, 2]])


def test_average_precision_hand_computed():
    # a1 ranks c1 (0.995), c2 (0.614), a2 (0.196): AP 1/3; a2 ranks c2, a1, c1: AP 1/2
    x = np.array([[1, 0.2], [0, 1], [1, 0.1], [0.5, 1]])
    ap = average_precision_activity(x, ["A", "A", "ctl", "ctl"], [False, False, True, True])
    np.testing.assert_allclose(ap["average_precision"], [1 / 3, 1 / 2], rtol=1e-6)
    res = phenotypic_activity(x, ["A", "A", "ctl", "ctl"], [False, False, True, True], null_size=200)
    assert res["treatment"].tolist() == ["A"]
    np.testing.assert_allclose(res["mAP"], [5 / 12], rtol=1e-6)
    # replicates far from controls retrieve each other first: AP = mAP = 1
    perfect = phenotypic_activity(np.array([[0, 1], [0.1, 1], [1, 0], [1, 0.1], [1, -0.1]]),
                                  ["B", "B", "c", "c", "c"], [0, 0, 1, 1, 1], null_size=200)  # fmt: skip
    assert perfect["mAP"].tolist() == [1.0]
    with pytest.raises(ValueError, match="needs control profiles"):
        average_precision_activity(x, ["A"] * 4, [False] * 4)


def test_knn_and_linear_probe():
    # k=1, held-out groups: hand-computed accuracy 0.5 (see comments)
    x, y = np.array([[0.0], [1.0], [10.0], [11.0]]), np.array(["a", "b", "a", "b"])
    # fold 1 tests 0 (->10: a, right) and 1 (->10: a, wrong); fold 2 tests 10 (->1: b, wrong), 11 (->1: b, right)
    assert knn_accuracy(x, y, k=1, groups=np.array([0, 0, 1, 1]), metric="euclidean") == 0.5
    rng = np.random.default_rng(0)
    centres = np.repeat([[6.0, 0, 0, 0], [0, 6.0, 0, 0]], 30, axis=0)  # apart in angle too (cosine kNN)
    feats = centres + rng.normal(0, 1, (60, 4))
    labels = np.repeat(["u", "v"], 30)
    assert knn_accuracy(feats, labels) == 1.0 and linear_probe_accuracy(feats, labels) == 1.0
    assert linear_probe_accuracy(rng.normal(size=(60, 4)), labels) < 0.8
    with pytest.raises(ValueError, match="single class"):
        knn_accuracy(feats, np.zeros(60))


def test_pca_rgb_separates_regions():
    feats = np.zeros((4, 6, 8))
    feats[:, :3, 0] = 5.0  # left half differs along one direction
    feats += np.random.default_rng(0).normal(0, 0.01, feats.shape)
    rgb = pca_rgb(feats)
    assert rgb.shape == (4, 6, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert np.abs(rgb[:, :3, 0].mean() - rgb[:, 3:, 0].mean()) > 0.8
    fg = pca_rgb(feats, foreground=True)
    assert (fg.reshape(-1, 3).sum(1) == 0).sum() >= 12  # background half black
