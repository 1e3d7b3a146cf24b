"""Quality metrics of embeddings: kNN and linear-probe accuracy on labelled rows, and the mean average
precision of phenotypic activity (replicates of a treatment retrieving each other against controls),
computed with copairs exactly as it defines it."""

from __future__ import annotations

import numpy as np
import pandas as pd


def _folds(y: np.ndarray, groups: np.ndarray | None, folds: int, seed: int):
    from sklearn.model_selection import GroupKFold, StratifiedKFold

    if groups is not None:
        n = min(folds, len(np.unique(groups)))
        return GroupKFold(n_splits=n).split(np.zeros(len(y)), y, groups)
    n = min(folds, int(np.min(np.unique(y, return_counts=True)[1])))
    if n < 2:
        raise ValueError("every class needs at least 2 rows for cross-validated accuracy")
    return StratifiedKFold(n_splits=n, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)


def _check(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"features {x.shape} and labels {y.shape} do not match (expected (n, d) and (n,))")
    if len(np.unique(y)) < 2:
        raise ValueError("labels have a single class; accuracy is undefined")
    return x, y


def knn_accuracy(
    x, y, k: int = 5, folds: int = 5, groups=None, metric: str = "cosine", seed: int = 0
) -> float:
    """Cross-validated accuracy of a k-nearest-neighbour classifier (held-out groups if given)."""
    from sklearn.neighbors import KNeighborsClassifier

    x, y = _check(x, y)
    correct = 0
    for train, test in _folds(y, groups, folds, seed):
        clf = KNeighborsClassifier(n_neighbors=min(k, len(train)), metric=metric).fit(x[train], y[train])
        correct += int((clf.predict(x[test]) == y[test]).sum())
    return correct / len(y)


def linear_probe_accuracy(x, y, folds: int = 5, groups=None, c: float = 1.0, seed: int = 0) -> float:
    """Cross-validated accuracy of a logistic-regression probe on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _check(x, y)
    correct = 0
    for train, test in _folds(y, groups, folds, seed):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        clf.fit(x[train], y[train])
        correct += int((clf.predict(x[test]) == y[test]).sum())
    return correct / len(y)


def average_precision_activity(x, treatments, is_control) -> pd.DataFrame:
    """copairs average precision of every non-control profile: positives are the other replicates of its
    treatment, negatives the controls; cosine similarity."""
    from copairs.map import average_precision

    x = np.asarray(x, dtype=np.float64)
    treatments = np.asarray(treatments).astype(str)
    is_control = np.asarray(is_control, dtype=bool)
    if is_control.sum() == 0:
        raise ValueError("phenotypic activity needs control profiles; none are flagged")
    if (~is_control).sum() == 0:
        raise ValueError("phenotypic activity needs treated profiles; all are controls")
    # copairs' reference index: controls get unique values, so they are never each other's positives
    ref = np.where(is_control, np.arange(len(x)), -1)
    meta = pd.DataFrame({"treatment": treatments, "reference_index": ref, "is_control": is_control})
    keys = ["treatment", "reference_index"]
    ap = average_precision(meta, x, pos_sameby=keys, pos_diffby=[], neg_sameby=[], neg_diffby=keys,
                           progress_bar=False)  # fmt: skip
    return ap[~ap["is_control"]].reset_index(drop=True)


def phenotypic_activity(x, treatments, is_control, null_size: int = 10000, threshold: float = 0.05,
                        seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Per-treatment mAP with copairs' permutation p-values (FDR-corrected), an `active` flag and the
    `p_value_floor`: the chance that a random ranking puts all of a replicate's positives first,
    1 / C(n_total, n_pos), the smallest p-value the design can honestly give (copairs counts only
    null APs strictly above the observed one, so it reports 1 / (null_size + 1) there instead)."""
    from copairs.map import mean_average_precision

    ap = average_precision_activity(x, treatments, is_control)
    ap = ap.dropna(subset=["average_precision"])
    if ap.empty:
        raise ValueError("no treatment has two or more replicates; mAP needs replicates")
    res = mean_average_precision(ap, sameby=["treatment"], null_size=null_size, threshold=threshold,
                                 seed=seed, progress_bar=False)  # fmt: skip
    res = res.rename(columns={"mean_average_precision": "mAP", "below_corrected_p": "active"})
    floors = ap.groupby("treatment")[["n_pos_pairs", "n_total_pairs"]].apply(
        lambda g: max(p_value_floor(int(n), int(t)) for n, t in zip(g["n_pos_pairs"], g["n_total_pairs"]))
    )
    res["p_value_floor"] = res["treatment"].map(floors).to_numpy(float)
    return res.reset_index(drop=True)


def p_value_floor(n_pos: int, n_total: int) -> float:
    """1 / C(n_total, n_pos): the null probability that `n_pos` positives rank first among `n_total`."""
    from math import comb

    return 1.0 / comb(n_total, n_pos) if 0 < n_pos <= n_total else 1.0
