"""Per-channel intensity statistics streamed over a store with dask, saved with the store for reuse."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import dask
import dask.array as da
import numpy as np
import zarr

from cellfm.data.stores import Image, is_tiff

ATTR_KEY = "cellfm_channel_stats"
SIDECAR_SUFFIX = ".cellfm-stats.json"
N_BINS = 4096


@dataclass(frozen=True)
class ChannelStats:
    """Mean, std and low/high percentiles per channel, with the channel names they belong to."""

    channels: list[str]
    mean: list[float]
    std: list[float]
    p_low: list[float]
    p_high: list[float]
    percentiles: tuple[float, float]
    n_pixels: int
    level: int | str

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {**asdict(self), "percentiles": list(self.percentiles)}

    @classmethod
    def from_dict(cls, d: dict) -> ChannelStats:
        """Inverse of `to_dict`; errors name the missing key."""
        try:
            return cls(list(d["channels"]), list(d["mean"]), list(d["std"]), list(d["p_low"]), list(d["p_high"]),
                       tuple(d["percentiles"]), int(d["n_pixels"]), d["level"])  # fmt: skip
        except KeyError as err:
            raise KeyError(f"channel statistics lack key {err}") from err

    def select(self, names: list[str]) -> ChannelStats:
        """Statistics reordered / subset to `names`; error lists both channel sets on a mismatch."""
        missing = [n for n in names if n not in self.channels]
        if missing:
            raise KeyError(f"statistics have channels {self.channels}; requested {names} (missing {missing})")
        idx = [self.channels.index(n) for n in names]
        pick = lambda v: [v[i] for i in idx]  # noqa: E731
        return ChannelStats(list(names), pick(self.mean), pick(self.std), pick(self.p_low), pick(self.p_high),
                            self.percentiles, self.n_pixels, self.level)  # fmt: skip


def _plane(image: Image) -> da.Array:
    """The (C, H, W) plane of an image's chosen level as a lazy dask array."""
    arr = image.array()
    index = tuple(slice(None) if a in "cyx" else (image.t if a == "t" else image.z) for a in image.axes)
    x = da.from_zarr(arr)[index] if image.kind != "tiff" else da.from_array(arr, chunks=arr.chunks)[index]
    kept = [a for a in image.axes if a in "cyx"]
    x = x.transpose([kept.index(a) for a in "cyx" if a in kept])
    x = x[None] if "c" not in kept else x
    return x[image.channel_select] if image.channel_select is not None else x


def compute_stats(
    images: list[Image], percentiles: tuple[float, float] = (1.0, 99.0), num_workers: int = 2
) -> ChannelStats:
    """Stream over all fields (two dask passes: moments and range, then histograms for percentiles)."""
    if not images:
        raise ValueError("no images to compute statistics over")
    names = images[0].channel_names
    for im in images[1:]:
        if im.channel_names != names:
            raise ValueError(
                f"{im.source}: channels {im.channel_names} differ from {names} ({images[0].source})"
            )
    planes = [_plane(im).astype(np.float64) for im in images]
    c = planes[0].shape[0]
    sums = [
        (p.sum(axis=(1, 2)), (p * p).sum(axis=(1, 2)), p.min(axis=(1, 2)), p.max(axis=(1, 2))) for p in planes
    ]
    with dask.config.set(scheduler="threads", num_workers=num_workers):
        (moments,) = dask.compute(sums)
    n = sum(int(np.prod(p.shape[1:])) for p in planes)
    total = np.sum([m[0] for m in moments], axis=0)
    total_sq = np.sum([m[1] for m in moments], axis=0)
    lo = np.min([m[2] for m in moments], axis=0)
    hi = np.max([m[3] for m in moments], axis=0)
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
    hists = [
        sum(
            da.histogram(p[ch], bins=N_BINS, range=(lo[ch], hi[ch] if hi[ch] > lo[ch] else lo[ch] + 1))[0]
            for p in planes
        )  # fmt: skip
        for ch in range(c)
    ]
    with dask.config.set(scheduler="threads", num_workers=num_workers):
        (hists,) = dask.compute(hists)
    p_low, p_high = [], []
    for ch in range(c):
        edges = np.linspace(lo[ch], hi[ch] if hi[ch] > lo[ch] else lo[ch] + 1, N_BINS + 1)
        cdf = np.cumsum(hists[ch]) / max(1, hists[ch].sum())
        p_low.append(float(edges[np.searchsorted(cdf, percentiles[0] / 100.0)]))
        p_high.append(float(edges[min(N_BINS, np.searchsorted(cdf, percentiles[1] / 100.0) + 1)]))
    return ChannelStats(
        names, mean.tolist(), std.tolist(), p_low, p_high, tuple(percentiles), n, images[0].level
    )


def sidecar_path(uri: str) -> str:
    """Sidecar JSON path beside a store or TIFF."""
    return str(uri).rstrip("/") + SIDECAR_SUFFIX


def save_stats(stats: ChannelStats, uri: str, sidecar: bool | None = None) -> str:
    """Save into the store root attributes (default for Zarr) or a sidecar JSON (TIFF, or when asked)."""
    if sidecar is None:
        sidecar = is_tiff(uri)
    if not sidecar:
        zarr.open_group(uri, mode="r+").attrs[ATTR_KEY] = stats.to_dict()
        return f"{uri} attribute {ATTR_KEY}"
    path = sidecar_path(uri)
    with open(path, "w") as fh:
        json.dump(stats.to_dict(), fh, indent=1)
    return path


def load_stats(uri: str) -> ChannelStats:
    """Load statistics saved by `save_stats` (store attributes first, then the sidecar)."""
    if not is_tiff(uri):
        try:
            found = zarr.open_group(uri, mode="r").attrs.get(ATTR_KEY)
        except (FileNotFoundError, ValueError):
            found = None
        if found is not None:
            return ChannelStats.from_dict(found)
    path = sidecar_path(uri)
    if os.path.exists(path):
        with open(path) as fh:
            return ChannelStats.from_dict(json.load(fh))
    raise FileNotFoundError(f"{uri}: no channel statistics (no '{ATTR_KEY}' attribute and no {path})")
