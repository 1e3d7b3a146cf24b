"""Pixel classifiers over (N, F) features: random forest (default) and logistic regression.

Both keep their fitted state as plain arrays, so a saved segmenter is an ``.npz`` loaded with
``allow_pickle=False`` (no unpickling). The forest is the default, by measurement with sparse strokes
(``benchmarks/segment_strokes.py``): logistic regression, chosen earlier on thousands of random dots,
falls behind an ilastik-style filter forest when a user paints a few hundred pixels. The forest just
fitted predicts with scikit-learn's compiled trees; a loaded one rebuilds them from its exported node
arrays (falling back to walking the arrays in numpy if scikit-learn's tree layout is unknown).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

CLASSIFIERS = ("logistic", "random_forest")


def softmax(scores: np.ndarray, axis: int = 0) -> np.ndarray:
    z = scores - scores.max(axis=axis, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)
    return z


class LogisticClassifier:
    """Standardised multinomial logistic regression, folded back to raw-feature weights."""

    kind = "logistic"
    linear = True

    def __init__(self, C: float = 1.0, max_iter: int = 300, seed: int = 0):
        self.C, self.max_iter, self.seed = C, max_iter, seed
        self.coef: np.ndarray | None = None  # (K, F) on raw features
        self.intercept: np.ndarray | None = None  # (K,)

    def fit(self, X: np.ndarray, y: np.ndarray) -> LogisticClassifier:
        """Fit on features X (N, F) and class indices y in 0..K-1 (every class present)."""
        from sklearn.linear_model import LogisticRegression

        mean = X.mean(0)
        std = X.std(0)
        std[std < 1e-6] = 1.0
        model = LogisticRegression(C=self.C, max_iter=self.max_iter, class_weight="balanced")
        model.fit((X - mean) / std, y)
        coef, icpt = model.coef_, model.intercept_
        if coef.shape[0] == 1:  # binary: sklearn keeps one row of scores for class 1
            coef = np.concatenate([np.zeros_like(coef), coef])
            icpt = np.concatenate([np.zeros_like(icpt), icpt])
        self.coef = (coef / std).astype(np.float32)
        self.intercept = (icpt - (coef / std) @ mean).astype(np.float32)
        return self

    def scores(self, X: np.ndarray) -> np.ndarray:
        return X @ self.coef.T + self.intercept

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(N, K) class probabilities."""
        return softmax(self.scores(X), axis=1)

    def state(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef, "intercept": self.intercept}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> LogisticClassifier:
        clf = cls()
        clf.coef, clf.intercept = state["coef"], state["intercept"]
        return clf


class ForestClassifier:
    """scikit-learn random forest, exported as plain node arrays (saved without pickle)."""

    kind = "random_forest"
    linear = False

    # 50 trees: on the sparse-stroke dev images as good as 100 (benchmarks/segment_strokes.py), half the time
    def __init__(self, n_estimators: int = 50, max_depth: int | None = None, seed: int = 0):
        self.n_estimators, self.max_depth, self.seed = n_estimators, max_depth, seed
        self.nodes: dict[str, np.ndarray] = {}
        self._model = None  # the fitted scikit-learn forest (fast prediction), absent after loading
        self._trees: list | None = None  # after loading: the node arrays as scikit-learn's compiled trees

    def fit(self, X: np.ndarray, y: np.ndarray) -> ForestClassifier:
        from sklearn.ensemble import RandomForestClassifier

        model = RandomForestClassifier(
            n_estimators=self.n_estimators, max_depth=self.max_depth, n_jobs=-1, random_state=self.seed,
            class_weight="balanced",
        )  # fmt: skip
        model.fit(X, y)
        k = int(y.max()) + 1
        left, right, feat, thr, val, root = [], [], [], [], [], []
        offset = 0
        for est in model.estimators_:
            t = est.tree_
            leaf = t.children_left < 0
            left.append(np.where(leaf, -1, t.children_left + offset))
            right.append(np.where(leaf, -1, t.children_right + offset))
            feat.append(np.where(leaf, 0, t.feature))
            thr.append(t.threshold)
            v = np.zeros((t.node_count, k))
            v[:, est.classes_.astype(int)] = t.value[:, 0] / t.value[:, 0].sum(1, keepdims=True)
            val.append(v)
            root.append(offset)
            offset += t.node_count
        self.nodes = {
            "left": np.concatenate(left).astype(np.int64),
            "right": np.concatenate(right).astype(np.int64),
            "feature": np.concatenate(feat).astype(np.int64),
            "threshold": np.concatenate(thr).astype(np.float64),
            "value": np.concatenate(val).astype(np.float32),
            "roots": np.asarray(root, np.int64),
        }
        self._model = model
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(N, K) mean of the trees' leaf class frequencies."""
        if self._model is not None:
            proba = np.zeros((len(X), self.nodes["value"].shape[1]), np.float32)
            proba[:, self._model.classes_.astype(int)] = self._model.predict_proba(X)
            return proba
        if self._trees is None:
            self._trees = compiled_trees(self.nodes, X.shape[1])
        if self._trees:
            X = np.ascontiguousarray(X, np.float32)
            with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
                parts = list(pool.map(lambda t: t.predict(X), self._trees))
            return (np.sum(parts, axis=0) / len(parts)).astype(np.float32)
        return self._walk(X)

    def _walk(self, X: np.ndarray) -> np.ndarray:
        """The forest evaluated in numpy (when scikit-learn's tree layout is not the one we know)."""
        n = self.nodes
        proba = np.zeros((len(X), n["value"].shape[1]), np.float32)
        rows = np.arange(len(X))
        for root in n["roots"]:
            node = np.full(len(X), root, np.int64)
            active = rows if n["left"][root] >= 0 else rows[:0]
            while len(active):
                cur = node[active]
                go_left = X[active, n["feature"][cur]] <= n["threshold"][cur]
                node[active] = np.where(go_left, n["left"][cur], n["right"][cur])
                active = active[n["left"][node[active]] >= 0]
            proba += n["value"][node]
        return proba / len(n["roots"])

    def state(self) -> dict[str, np.ndarray]:
        return dict(self.nodes)

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> ForestClassifier:
        clf = cls()
        clf.nodes = dict(state)
        return clf


def compiled_trees(nodes: dict[str, np.ndarray], num_features: int) -> list:
    """scikit-learn `Tree` objects rebuilt from exported node arrays (no unpickling: their documented
    state layout, filled from our arrays); [] when this scikit-learn's layout is not the one we know."""
    from sklearn.tree._tree import Tree

    bounds = [*nodes["roots"].tolist(), len(nodes["left"])]
    k = nodes["value"].shape[1]
    trees = []
    try:
        for a, b in zip(bounds[:-1], bounds[1:]):
            tree = Tree(num_features, np.array([k], np.intp), 1)
            layout = tree.__getstate__()["nodes"].dtype
            arr = np.zeros(b - a, layout)
            leaf = nodes["left"][a:b] < 0
            arr["left_child"] = np.where(leaf, -1, nodes["left"][a:b] - a)
            arr["right_child"] = np.where(leaf, -1, nodes["right"][a:b] - a)
            arr["feature"] = np.where(leaf, -2, nodes["feature"][a:b])
            arr["threshold"] = np.where(leaf, -2.0, nodes["threshold"][a:b])
            arr["n_node_samples"], arr["weighted_n_node_samples"] = 1, 1.0
            values = np.ascontiguousarray(nodes["value"][a:b, None, :], np.float64)
            tree.__setstate__({"max_depth": b - a, "node_count": b - a, "nodes": arr, "values": values})
            trees.append(tree)
    except (KeyError, ValueError, TypeError):
        return []
    return trees


def make_classifier(kind: str, seed: int = 0, **kwargs) -> LogisticClassifier | ForestClassifier:
    if kind == "logistic":
        return LogisticClassifier(seed=seed, **kwargs)
    if kind == "random_forest":
        return ForestClassifier(seed=seed, **kwargs)
    raise ValueError(f"unknown classifier {kind!r}; choose one of {CLASSIFIERS}")


def classifier_from_state(kind: str, state: dict[str, np.ndarray]) -> LogisticClassifier | ForestClassifier:
    return {"logistic": LogisticClassifier, "random_forest": ForestClassifier}[kind].from_state(state)
