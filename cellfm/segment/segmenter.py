"""ScribbleSegmenter: scribbles + backbone features -> pixel classifier -> labels, for 2D, 3D and time stacks."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch import nn

from .cache import FeatureCache
from .classifier import classifier_from_state, make_classifier, softmax
from .features import FeatureExtractor, ImageFeatures
from .filters import FilterBank
from .image import AUTO, ChannelNorm, as_numpy, resolve_channel_axis, spatial_shape, to_stack
from .postprocess import instances, remove_small
from .projection import PatchProjection
from .refine import coarse_to_fine
from .selection import choose_columns, stroke_groups
from .tiling import Tiling

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
FILTERS_ONLY, WITH_BACKBONE = "filters", "filters + backbone"
REFINE_MIN_PIXELS = 256 * 256  # smaller slices: a forest predicts every pixel (cheap, exact)
Fraction = Callable[[float], None]


class ScribbleSegmenter:
    """Interactive pixel classification on backbone patch features plus cheap pixel filters.

    `fit(image, scribbles)`: image (H, W), (C, H, W) or any stack with `channel_axis`; scribbles
    have the image's shape without the channel axis, 0 = unlabelled, 1..K the classes.
    Features of every slice are cached, so refitting after new scribbles costs only the classifier.

    Backbone patch features are reduced to `patch_components` principal components (None: all) so a
    forest weighs them like the filters. With `select`, held-out strokes (leave-one-stroke-out folds)
    decide whether the backbone features join the filters: they are dropped only when the filters
    alone validate better; `feature_set` says which won.
    With `coarse_to_fine`, a forest predicts slices of 256^2 pixels or more on a sparse grid refined
    where the class can change (`cellfm.segment.refine`), about 3x faster with the same labels.
    """

    def __init__(
        self,
        backbone: nn.Module | None = None,
        *,
        channel_axis: int | None | str = AUTO,
        classifier: str = "random_forest",
        filters: FilterBank | bool | None = True,
        tiling: Tiling | None = None,
        layers: int = 1,
        cache: FeatureCache | None = None,
        extractor: FeatureExtractor | None = None,
        max_samples_per_class: int = 20_000,
        seed: int = 0,
        classifier_kwargs: dict | None = None,
        patch_components: int | None = 16,
        select: bool = True,
        coarse_to_fine: bool = True,
    ):
        if extractor is None:
            if backbone is None:
                raise ValueError("pass a backbone (e.g. cellfm.models.vit_small()) or a FeatureExtractor")
            bank = FilterBank() if filters is True else (filters or None)
            extractor = FeatureExtractor(backbone, tiling=tiling, filters=bank, layers=layers, cache=cache)
        self.extractor = extractor
        self.channel_axis = channel_axis
        self.classifier_kind = classifier
        self.classifier_kwargs = dict(classifier_kwargs or {})
        make_classifier(classifier, **self.classifier_kwargs)  # validate early
        self.max_samples_per_class = int(max_samples_per_class)
        self.seed = seed
        self.patch_components = patch_components
        self.select = bool(select)
        self.coarse_to_fine = bool(coarse_to_fine)
        self.projection: PatchProjection | None = None
        self.feature_set = WITH_BACKBONE
        self.selection_scores: dict[str, float] = {}
        self._views: dict[int, tuple[ImageFeatures, ImageFeatures]] = {}
        self.classifier = None
        self.classes_: np.ndarray | None = None
        self.norm: ChannelNorm | None = None

    # -- fitting ----------------------------------------------------------------------------
    def fit(self, image, scribbles, progress: Fraction | None = None) -> ScribbleSegmenter:
        """Train the classifier on the scribbled pixels (only slices with scribbles are encoded)."""
        arr = as_numpy(image)
        stack, lead = to_stack(arr, self.channel_axis)
        axis = resolve_channel_axis(arr.ndim, self.channel_axis)
        labels = as_numpy(scribbles, "scribbles")
        expected = spatial_shape(arr.shape, axis)
        if labels.shape != expected:
            raise ValueError(
                f"scribbles have shape {labels.shape} but the image {arr.shape} (channel_axis={axis}) "
                f"needs {expected}"
            )
        if labels.dtype.kind not in "biu" or (labels.dtype.kind == "i" and labels.min() < 0):
            raise ValueError(
                f"scribbles must be non-negative integers (0 = unlabelled), got dtype {labels.dtype}"
            )
        classes = np.unique(labels[labels > 0])
        if len(classes) < 2:
            raise ValueError(
                f"scribbles need at least two classes (e.g. 1 = background, 2 = foreground); found "
                f"{classes.tolist()}"
            )
        self.norm = ChannelNorm.from_stack(stack)
        flat = labels.reshape(-1, *labels.shape[-2:])
        picks = self._pick_samples(flat, classes)
        slices = sorted(picks)
        grids = [
            self._features(stack[s], progress, n, len(slices), view=False).patch for n, s in enumerate(slices)
        ]
        self.feature_set, self.selection_scores, self._views = WITH_BACKBONE, {}, {}
        self.projection = None
        if self.patch_components and self.patch_components < len(grids[0]):
            self.projection = PatchProjection.fit(grids, self.patch_components, self.seed)
        del grids
        views = [self._features(stack[s], None, 0, 1) for s in slices[:1]]
        X = np.concatenate([self._features(stack[s], None, 0, 1).sample(*picks[s]) for s in slices])
        y = np.concatenate([np.searchsorted(classes, flat[s][picks[s]]) for s in slices])
        d = views[0].num_patch_features
        if self.select and views[0].num_filter_features and d:
            # ties keep the backbone: with sparse strokes both sets often validate perfectly, and on the
            # dev images filters + backbone beat filters alone (benchmarks/segment_strokes.py)
            cols = {WITH_BACKBONE: np.arange(X.shape[1]), FILTERS_ONLY: np.arange(d, X.shape[1])}
            groups = stroke_groups(flat, picks)
            self.feature_set, self.selection_scores = choose_columns(X, y, groups, cols, self.seed)
            if self.feature_set == FILTERS_ONLY:
                X = X[:, d:]
                self._views = {}
        clf = make_classifier(self.classifier_kind, seed=self.seed, **self.classifier_kwargs)
        self.classifier = clf.fit(X, y)
        self.classes_ = classes
        if progress is not None:
            progress(1.0)
        return self

    def _pick_samples(
        self, flat: np.ndarray, classes: np.ndarray
    ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """At most `max_samples_per_class` random scribbled pixels per class, grouped by slice."""
        rng = np.random.default_rng(self.seed)
        s, ys, xs = np.nonzero(flat)
        values = flat[s, ys, xs]
        keep = []
        for c in classes:
            idx = np.nonzero(values == c)[0]
            if len(idx) > self.max_samples_per_class:
                idx = rng.choice(idx, self.max_samples_per_class, replace=False)
            keep.append(idx)
        keep = np.sort(np.concatenate(keep))
        s, ys, xs = s[keep], ys[keep], xs[keep]
        return {int(i): (ys[s == i], xs[s == i]) for i in np.unique(s)}

    def _view(self, feats: ImageFeatures) -> ImageFeatures:
        """The features the classifier sees: projected backbone features (or none) plus the filters."""
        if self.projection is None and self.feature_set == WITH_BACKBONE:
            return feats
        hit = self._views.get(id(feats))
        if hit is not None and hit[0] is feats:
            return hit[1]
        if self.feature_set == FILTERS_ONLY:
            patch = np.zeros((0, *feats.patch.shape[1:]), np.float32)
        else:
            patch = self.projection.apply(feats.patch)
        view = ImageFeatures(patch, feats.scaled, feats.patch_size, feats.filters)
        view.filter_rows = feats.filter_rows  # one filter stack per slice, kept across refits
        self._views = {k: v for k, v in list(self._views.items())[-1:]}
        self._views[id(feats)] = (feats, view)
        return view

    def _features(
        self, raw: np.ndarray, progress: Fraction | None, n: int, total: int, view: bool = True
    ) -> ImageFeatures:
        tick = None
        if progress is not None:
            progress(n / total)

            def tick(done: int, tiles: int) -> None:
                progress((n + done / tiles) / total)

        feats = self.extractor.features(raw, self.norm, tick)
        return self._view(feats) if view else feats

    # -- prediction -------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if self.classifier is None:
            raise RuntimeError("the segmenter is not fitted: call fit(image, scribbles) or load(path) first")

    def _slice_scores(self, feats: ImageFeatures) -> np.ndarray:
        """(K, H, W) log-probabilities (logistic: raw scores) of one slice."""
        clf = self.classifier
        if clf.linear:
            return feats.linear_scores(clf.coef, clf.intercept)
        h, w = feats.shape
        if self.coarse_to_fine and h * w >= REFINE_MIN_PIXELS:
            proba, _ = coarse_to_fine(
                lambda ys, xs: self._proba_at(feats, ys, xs), (h, w), len(self.classes_)
            )
            return np.log(proba + 1e-7)
        out = np.empty((len(self.classes_), h, w), np.float32)
        for y0, y1 in feats.row_blocks(64 << 20):
            block = feats.dense_rows(y0, y1).reshape(feats.num_features, -1).T
            out[:, y0:y1] = np.log(clf.predict_proba(block).T.reshape(-1, y1 - y0, w) + 1e-7)
        return out

    def _proba_at(self, feats: ImageFeatures, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """(N, K) classifier probabilities at pixels, in chunks of bounded memory."""
        step = max(1, (64 << 20) // (4 * feats.num_features))
        parts = [self.classifier.predict_proba(feats.sample(ys[i : i + step], xs[i : i + step]))
                 for i in range(0, len(ys), step)]  # fmt: skip
        return np.concatenate(parts) if parts else np.zeros((0, len(self.classes_)), np.float32)

    def _scores(self, image, progress: Fraction | None) -> tuple[np.ndarray, tuple[int, ...]]:
        self._check_fitted()
        stack, lead = to_stack(image, self.channel_axis)
        if stack.shape[1] != self.norm.num_channels:
            raise ValueError(
                f"image {as_numpy(image).shape} has {stack.shape[1]} channels (channel_axis="
                f"{self.channel_axis}) but the segmenter was fitted on {self.norm.num_channels}"
            )
        scores = np.empty((len(self.classes_), len(stack), *stack.shape[-2:]), np.float32)
        for s in range(len(stack)):
            scores[:, s] = self._slice_scores(self._features(stack[s], progress, s, len(stack)))
        if progress is not None:
            progress(1.0)
        return scores, lead

    def predict_proba(self, image, progress: Fraction | None = None) -> np.ndarray:
        """(K, *spatial) float32 class probabilities, in the order of `classes_`."""
        scores, lead = self._scores(image, progress)
        proba = softmax(scores, axis=0)
        return proba.reshape(len(self.classes_), *lead, *proba.shape[-2:])

    def predict(self, image, min_size: int = 0, progress: Fraction | None = None, return_proba: bool = False):
        """Labels with the scribbles' class values, shaped like the image without its channel axis.

        `min_size` > 1 turns pieces of non-background classes smaller than that into background
        (the lowest class value), slice by slice. `return_proba` also returns `predict_proba`'s
        array from the same pass (labels, proba).
        """
        scores, lead = self._scores(image, progress)
        idx = scores.argmax(0)
        dtype = np.uint8 if self.classes_.max() < 256 else np.int32
        labels = self.classes_.astype(dtype)[idx]
        if min_size > 1:
            labels = np.stack([remove_small(sl, min_size, self.background) for sl in labels])
        labels = labels.reshape(*lead, *labels.shape[-2:])
        if not return_proba:
            return labels
        proba = softmax(scores, axis=0)
        return labels, proba.reshape(len(self.classes_), *lead, *proba.shape[-2:])

    @property
    def background(self) -> int:
        """The background class: the lowest scribble value."""
        self._check_fitted()
        return int(self.classes_[0])

    def predict_instances(
        self,
        image,
        foreground: int | list[int] | None = None,
        method: str = "watershed",
        min_distance: int = 5,
        min_size: int = 0,
        per_slice: bool = True,
        progress: Fraction | None = None,
        semantic: np.ndarray | None = None,
    ) -> np.ndarray:
        """int32 instance labels of the foreground classes (default: all but background).

        Stacks are split slice by slice (`per_slice=True`, for time series) or as one volume (3D).
        `semantic`: this image's `predict` labels when already computed (skips the classifier).
        """
        labels = self.predict(image, progress=progress) if semantic is None else np.asarray(semantic)
        fg = [c for c in self.classes_ if c != self.background] if foreground is None else foreground
        mask = np.isin(labels, np.atleast_1d(fg))
        if not per_slice or mask.ndim == 2:
            return instances(mask, method, min_distance, min_size)
        flat = mask.reshape(-1, *mask.shape[-2:])
        out = np.zeros(flat.shape, np.int32)
        offset = 0
        for i, m in enumerate(flat):
            lab = instances(m, method, min_distance, min_size)
            out[i] = np.where(lab > 0, lab + offset, 0)
            offset = max(offset, int(out[i].max()))
        return out.reshape(mask.shape)

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write classifier arrays and settings to an ``.npz`` (no pickle)."""
        self._check_fitted()
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(path.suffix + ".npz")
        meta = {
            "format_version": FORMAT_VERSION,
            "classifier": self.classifier_kind,
            "classifier_kwargs": self.classifier_kwargs,
            "classes": self.classes_.tolist(),
            "channel_axis": self.channel_axis,
            "norm": self.norm.to_dict(),
            "features": self.extractor.describe(),
            "max_samples_per_class": self.max_samples_per_class,
            "seed": self.seed,
            "patch_components": self.patch_components,
            "select": self.select,
            "coarse_to_fine": self.coarse_to_fine,
            "feature_set": self.feature_set,
            "selection_scores": self.selection_scores,
        }
        arrays = {f"clf.{k}": v for k, v in self.classifier.state().items()}
        if self.projection is not None:
            arrays.update({f"proj.{k}": v for k, v in self.projection.state().items()})
        np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)
        return path

    @classmethod
    def load(
        cls, path: str | Path, backbone: nn.Module, cache: FeatureCache | None = None, strict: bool = True
    ) -> ScribbleSegmenter:
        """A fitted segmenter from `save`; `backbone` must be the one it was trained with (hash check)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no segmenter file at {path}")
        with np.load(path, allow_pickle=False) as data:
            if "meta" not in data:
                raise ValueError(f"{path} is not a cellfm segmenter file (no 'meta' entry)")
            meta = json.loads(str(data["meta"]))
            state = {k[4:]: data[k] for k in data.files if k.startswith("clf.")}
            proj = {k[5:]: data[k] for k in data.files if k.startswith("proj.")}
        if meta.get("format_version") not in READABLE_VERSIONS:
            raise ValueError(f"{path}: unsupported segmenter format {meta.get('format_version')}")
        f = meta["features"]
        extractor = FeatureExtractor(
            backbone,
            tiling=Tiling(**f["tiling"]),
            filters=FilterBank(tuple(f["filters"])) if f["filters"] is not None else None,
            layers=f["layers"],
            cache=cache,
        )
        if extractor.model_hash != f["model"]:
            msg = f"{path} was trained with backbone {f['model']}, got {extractor.model_hash}"
            if strict:
                raise ValueError(msg + "; load the same weights, or pass strict=False to use it anyway")
            warnings.warn(msg, stacklevel=2)
        seg = cls(
            extractor=extractor,
            channel_axis=meta["channel_axis"],
            classifier=meta["classifier"],
            max_samples_per_class=meta["max_samples_per_class"],
            seed=meta["seed"],
            classifier_kwargs=meta["classifier_kwargs"],
            patch_components=meta.get("patch_components"),
            select=meta.get("select", False),
            coarse_to_fine=meta.get("coarse_to_fine", False),
        )
        seg.feature_set = meta.get("feature_set", WITH_BACKBONE)
        seg.selection_scores = meta.get("selection_scores", {})
        seg.projection = PatchProjection.from_state(proj) if proj else None
        seg.classifier = classifier_from_state(meta["classifier"], state)
        seg.classes_ = np.asarray(meta["classes"])
        seg.norm = ChannelNorm.from_dict(meta["norm"])
        return seg
