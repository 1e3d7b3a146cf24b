"""Backbone patch features of a (C, H, W) image, tiled with overlap, cached, and mapped to pixels.

Channels: a backbone built for the image's channel count (or a Bag-of-Channels / channel-token
backbone) sees the image as is. A 1-channel backbone encodes each channel as its own image and the
features are concatenated channel by channel (Bag-of-Channels style, C * D features). A 3-channel
(RGB) backbone repeats a 1-channel image. Any other mismatch is an error.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .cache import FeatureCache, array_hash, model_hash, signature
from .filters import FilterBank
from .image import ChannelNorm
from .tiling import Tiling, owned_ranges, sample_points, tile_starts, upsample_rows

Progress = Callable[[int, int], None]
DEFAULT_FILTERS = FilterBank()


def channel_mode(backbone: nn.Module, num_channels: int) -> str:
    """How `backbone` sees a `num_channels` image: "native", "per_channel" or "repeat"."""
    arch = backbone.arch
    strategy = getattr(arch, "channel_strategy", "fixed")
    if strategy == "bag_of_channels" or type(backbone).__name__ == "BagOfChannels":
        return "native"
    if strategy == "channel_tokens":
        if num_channels > arch.in_chans:
            raise ValueError(f"image has {num_channels} channels but the backbone knows {arch.in_chans}")
        return "native"
    if arch.in_chans == num_channels:
        return "native"
    if arch.in_chans == 1:
        return "per_channel"
    if arch.in_chans == 3 and num_channels == 1:
        return "repeat"
    raise ValueError(
        f"image has {num_channels} channels but the backbone expects in_chans={arch.in_chans}; "
        f"pick the channels the model was trained on, or use a 1-channel / Bag-of-Channels backbone"
    )


class ImageFeatures:
    """Features of one (C, H, W) slice: cached patch grid (D, h, w) plus pixel filters on demand."""

    def __init__(self, patch: np.ndarray, scaled: np.ndarray, patch_size: int, filters: FilterBank | None,
                 filter_cache_bytes: int = 512 << 20):  # fmt: skip
        self.patch = patch
        self.scaled = scaled
        self.patch_size = patch_size
        self.filters = filters
        self.shape = scaled.shape[1:]
        self._filter_cache_bytes = filter_cache_bytes
        self._filter_stack: np.ndarray | None = None

    @property
    def num_patch_features(self) -> int:
        return self.patch.shape[0]

    @property
    def num_filter_features(self) -> int:
        return self.filters.num_features(self.scaled.shape[0]) if self.filters else 0

    @property
    def num_features(self) -> int:
        return self.num_patch_features + self.num_filter_features

    def filter_rows(self, y0: int, y1: int) -> np.ndarray:
        """(F, y1 - y0, W) pixel filters; the whole stack is kept when it fits the budget."""
        if self.filters is None:
            return np.zeros((0, y1 - y0, self.shape[1]), np.float32)
        if self._filter_stack is None:
            size = self.num_filter_features * self.shape[0] * self.shape[1] * 4
            if size > self._filter_cache_bytes:
                return self.filters.compute(self.scaled, (y0, y1))
            self._filter_stack = self.filters.compute(self.scaled)
        return self._filter_stack[:, y0:y1]

    def row_blocks(self, budget_bytes: int = 256 << 20) -> list[tuple[int, int]]:
        rows = max(1, budget_bytes // max(1, self.num_features * self.shape[1] * 4))
        return [(y, min(y + rows, self.shape[0])) for y in range(0, self.shape[0], rows)]

    def sample(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """(N, D + F) features at pixel coordinates, exactly what `dense_rows` gives there."""
        ys, xs = np.asarray(ys, np.int64), np.asarray(xs, np.int64)
        out = np.empty((len(ys), self.num_features), np.float32)
        out[:, : self.num_patch_features] = sample_points(self.patch, ys, xs, self.patch_size)
        if self.filters is not None and len(ys):
            for y0, y1 in self.row_blocks():
                sel = np.nonzero((ys >= y0) & (ys < y1))[0]
                if len(sel):
                    f = self.filter_rows(y0, y1)
                    out[sel, self.num_patch_features :] = f[:, ys[sel] - y0, xs[sel]].T
        return out

    def dense_rows(self, y0: int, y1: int) -> np.ndarray:
        """(D + F, y1 - y0, W) pixel-resolution features of rows [y0, y1)."""
        up = upsample_rows(self.patch, (y0, y1), self.shape[1], self.patch_size)
        return np.concatenate([up, self.filter_rows(y0, y1)]) if self.filters else up

    def linear_scores(self, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
        """(K, H, W) scores ``coef @ features + intercept`` without building pixel features.

        Bilinear upsampling is linear with weights summing to one, so scoring the patch grid first
        and upsampling K score maps equals scoring the upsampled D features, at a fraction of the cost.
        """
        d = self.num_patch_features
        grid = np.tensordot(coef[:, :d], self.patch, axes=1) + intercept[:, None, None]
        h, w = self.shape
        scores = upsample_rows(grid.astype(np.float32), (0, h), w, self.patch_size)
        if self.filters is not None:
            wf = coef[:, d:].astype(np.float32)
            for y0, y1 in self.row_blocks():
                f = self.filter_rows(y0, y1)
                scores[:, y0:y1] += np.tensordot(wf, f, axes=1)
        return scores


class FeatureExtractor:
    """Patch features of a backbone for (C, H, W) images: tiled, batched, cached by signature."""

    def __init__(
        self,
        backbone: nn.Module,
        tiling: Tiling | None = None,
        filters: FilterBank | None = DEFAULT_FILTERS,
        layers: int = 1,
        cache: FeatureCache | None = None,
    ):
        if not hasattr(backbone, "get_intermediate_layers") or not hasattr(backbone, "arch"):
            raise TypeError(
                f"backbone must be a cellfm backbone (VisionTransformer, BagOfChannels, ChannelTokensViT), "
                f"got {type(backbone).__name__}"
            )
        self.backbone = backbone.eval()
        self.tiling = tiling or Tiling()
        self.filters = filters
        self.layers = int(layers)
        self.cache = cache if cache is not None else FeatureCache()
        self.patch_size = int(backbone.patch_size)
        self._model_hash: str | None = None
        self._recent: OrderedDict[str, ImageFeatures] = OrderedDict()

    @property
    def model_hash(self) -> str:
        if self._model_hash is None:
            self._model_hash = model_hash(self.backbone)
        return self._model_hash

    def describe(self) -> dict:
        """Everything that changes the features (besides the image and its normalisation)."""
        return {
            "model": self.model_hash,
            "patch_size": self.patch_size,
            "tiling": self.tiling.to_dict(),
            "layers": self.layers,
            "filters": list(self.filters.sigmas) if self.filters else None,
        }

    def features(self, raw: np.ndarray, norm: ChannelNorm, progress: Progress | None = None) -> ImageFeatures:
        """Features of one raw (C, H, W) slice scaled by `norm`; patch features come from the cache if seen."""
        if raw.ndim != 3:
            raise ValueError(f"expected one (C, H, W) slice, got shape {raw.shape}")
        mode = channel_mode(self.backbone, raw.shape[0])
        key = signature(data=array_hash(raw), norm=norm.to_dict(), mode=mode, **self.describe())
        if key in self._recent:
            self._recent.move_to_end(key)
            return self._recent[key]
        scaled = norm.scale(raw)
        patch = self.cache.get(key)
        if patch is None:
            patch = self.patch_features(norm.standardize(scaled), progress)
            self.cache.put(key, patch)
        feats = ImageFeatures(patch, scaled, self.patch_size, self.filters)
        self._recent[key] = feats
        while len(self._recent) > 2:
            self._recent.popitem(last=False)
        return feats

    @torch.inference_mode()
    def patch_features(self, x: np.ndarray, progress: Progress | None = None) -> np.ndarray:
        """(D, ceil(H/p), ceil(W/p)) float32 features of a standardised (C, H, W) image, tiled."""
        p = self.patch_size
        c, h, w = x.shape
        gh, gw = -(-h // p), -(-w // p)
        x = np.pad(x, ((0, 0), (0, gh * p - h), (0, gw * p - w)), mode="reflect" if min(h, w) > 1 else "edge")
        t, overlap = self.tiling.in_patches(p)
        ty, tx = min(t, gh), min(t, gw)
        sy, sx = tile_starts(gh, ty, overlap), tile_starts(gw, tx, overlap)
        oy, ox = owned_ranges(sy, ty, gh), owned_ranges(sx, tx, gw)
        jobs = [(i, j) for i in range(len(sy)) for j in range(len(sx))]
        out: np.ndarray | None = None
        device = next(self.backbone.parameters()).device
        bs = self.tiling.batch_size
        for done in range(0, len(jobs), bs):
            chunk = jobs[done : done + bs]
            batch = np.stack(
                [x[:, sy[i] * p : (sy[i] + ty) * p, sx[j] * p : (sx[j] + tx) * p] for i, j in chunk]
            )
            feats = self._encode(torch.from_numpy(batch).to(device)).float().cpu().numpy()
            if out is None:
                out = np.empty((feats.shape[1], gh, gw), np.float32)
            for (i, j), f in zip(chunk, feats):
                (a0, a1), (b0, b1) = oy[i], ox[j]
                out[:, a0:a1, b0:b1] = f[:, a0 - sy[i] : a1 - sy[i], b0 - sx[j] : b1 - sx[j]]
            if progress is not None:
                progress(min(done + bs, len(jobs)), len(jobs))
        return out

    def _encode(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, D', h/p, w/p) with the last `layers` blocks concatenated."""
        b, c = batch.shape[:2]
        mode = channel_mode(self.backbone, c)
        dtype = next(self.backbone.parameters()).dtype
        x = batch.to(dtype)
        if mode == "per_channel":
            x = x.reshape(b * c, 1, *x.shape[2:])
        elif mode == "repeat":
            x = x.expand(b, 3, *x.shape[2:])
        outs = self.backbone.get_intermediate_layers(x, self.layers, reshape=True, norm=True)
        f = torch.cat(list(outs), dim=1)
        if mode == "per_channel":
            f = f.reshape(b, c * f.shape[1], *f.shape[2:])
        return f
