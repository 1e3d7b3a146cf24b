"""Small designs: sphering / TVN with fewer controls than features are regularised as pycytominer's
Spherize is (with a warning giving the counts); mAP p-values report the floor the replicates allow."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellfm.analysis import analyze, normalize_to_controls, phenotypic_activity
from cellfm.analysis.metrics import p_value_floor


def low_rank_profiles(n_ctrl=10, n_trt=30, d=64, seed=0):
    rng = np.random.default_rng(seed)
    n = n_ctrl + n_trt
    x = rng.normal(size=(n, 8)) @ rng.normal(size=(8, d)) + 0.3 * rng.normal(size=(n, d))
    x[n_ctrl:] += 0.5
    obs = pd.DataFrame(
        {"plate": ["P"] * n, "control": [True] * n_ctrl + [False] * n_trt}, index=[str(i) for i in range(n)]
    )
    return ad.AnnData(x.astype(np.float32), obs=obs), x


def test_sphering_with_few_controls_matches_pycytominer_and_warns():
    from pycytominer.operations.transform import Spherize

    a, x = low_rank_profiles()
    with pytest.warns(
        UserWarning, match=r"sphering plate 'P': 10 control rows for 64 features.*rank 9; its 55 null"
    ):
        ours = normalize_to_controls(a, "sphering")
    theirs = (
        Spherize(epsilon=1e-6, method="ZCA").fit(pd.DataFrame(x[:10])).transform(pd.DataFrame(x)).to_numpy()
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-3)
    assert np.abs(ours[10:]).max() < 20  # unregularised: ~3000
    with pytest.warns(UserWarning, match=r"tvn \(all controls\): 10 control rows for 64 features"):
        tvn = normalize_to_controls(a, "tvn")
    assert np.isfinite(tvn).all() and np.abs(tvn[10:]).max() < 50


def test_full_rank_controls_do_not_warn():
    a, _ = low_rank_profiles(n_ctrl=200, d=16)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = normalize_to_controls(a, "sphering")
    np.testing.assert_allclose(np.cov(out[:200], rowvar=False), np.eye(16), atol=1e-3)


def test_p_value_floor_of_two_replicates_and_two_controls(caplog):
    assert p_value_floor(1, 3) == pytest.approx(1 / 3) and p_value_floor(3, 13) == pytest.approx(1 / 286)
    x = np.array([[0, 1], [0.1, 1], [1, 0], [1, 0.1]])
    res = phenotypic_activity(x, ["B", "B", "c", "c"], [0, 0, 1, 1], null_size=1000)
    assert res["mAP"].tolist() == [1.0] and res["p_value"].iloc[0] < 0.01  # copairs: "significant"
    assert res["p_value_floor"].tolist() == [pytest.approx(1 / 3)]  # but 1 in 3 random rankings do as well
    obs = pd.DataFrame({"plate": "P", "well": ["A1", "A2", "A3", "A4"], "treatment": ["B", "B", "c", "c"],
                        "control": [False, False, True, True]}, index=list("abcd"))  # fmt: skip
    a = ad.AnnData(x.astype(np.float32), obs=obs)
    with caplog.at_level(logging.WARNING, logger="cellfm.analysis.pipeline"):
        _, _, report = analyze(a, methods=(), n_neighbors=2, null_size=200)
    assert report["map_p_value_floor"] == pytest.approx(1 / 3)
    assert report["phenotypic_activity"]["B"]["p_value_floor"] == pytest.approx(1 / 3)
    assert "too few replicates for a p-value below 0.01 (smallest possible p: B 0.333)" in caplog.text
