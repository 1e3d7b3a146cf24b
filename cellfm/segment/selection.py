"""Model selection on the strokes themselves: leave-one-stroke-out between feature sets.

A stroke is a connected piece of one class in the scribbles. Pixels of one stroke are nearly copies of
each other, so the honest validation holds whole strokes out (grouped folds): a feature set that only
memorises where the user painted scores badly there. `choose_columns` returns the candidate that
validates best, the first one listed on ties (list the preferred one first).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

MAX_FOLDS = 3  # 3 folds of 8 trees choose as well as 4 of 16 on the dev images, at 3x less cost
CV_TREES = 8
TIE = 0.005


def stroke_groups(flat: np.ndarray, picks: dict[int, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Stroke id of every picked pixel (in the order `picks` is read slice by slice)."""
    groups, offset = [], 0
    for s in sorted(picks):
        ys, xs = picks[s]
        comp = np.zeros(flat.shape[1:], np.int64)
        for value in np.unique(flat[s][flat[s] > 0]):
            lab, n = ndi.label(flat[s] == value, structure=np.ones((3, 3)))
            comp[lab > 0] = lab[lab > 0] + offset
            offset += n
        groups.append(comp[ys, xs])
    return np.concatenate(groups) if groups else np.zeros(0, np.int64)


def stroke_score(X: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int = 0) -> float:
    """Balanced accuracy of a small random forest on held-out strokes (grouped folds); nan if there
    are too few strokes to hold one out of every class."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GroupKFold

    per_class = [len(np.unique(groups[y == c])) for c in np.unique(y)]
    folds = min(MAX_FOLDS, min(per_class))
    if folds < 2:
        return float("nan")
    truth, pred = [], []
    for train, test in GroupKFold(folds).split(X, y, groups):
        if len(np.unique(y[train])) < len(per_class):
            continue
        model = RandomForestClassifier(CV_TREES, n_jobs=1, random_state=seed, class_weight="balanced")
        model.fit(X[train], y[train])
        truth.append(y[test])
        pred.append(model.predict(X[test]))
    if not truth:
        return float("nan")
    return float(balanced_accuracy_score(np.concatenate(truth), np.concatenate(pred)))


def choose_columns(
    X: np.ndarray, y: np.ndarray, groups: np.ndarray, candidates: dict[str, np.ndarray], seed: int = 0
) -> tuple[str, dict[str, float]]:
    """The name of the candidate column set that validates best on held-out strokes, and all scores."""
    scores = {name: stroke_score(X[:, cols], y, groups, seed) for name, cols in candidates.items()}
    best = next(iter(candidates))
    for name, score in scores.items():
        if np.isfinite(score) and score > scores[best] + TIE:
            best = name
    return best, scores
