"""Input handling: any array or tensor to a stack of (C, H, W) float32 slices, and channel normalisation.

Axes convention: the last two axes are Y and X; one optional axis (``channel_axis``) holds channels;
every other leading axis (Z, T, ...) is a stack axis, processed slice by slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AUTO = "auto"


def as_numpy(image, name: str = "image") -> np.ndarray:
    """A numpy view of a numpy array, torch tensor or array-like (dask arrays are computed)."""
    if hasattr(image, "detach") and hasattr(image, "cpu"):  # torch.Tensor without importing torch here
        return image.detach().cpu().numpy()
    if hasattr(image, "compute") and not isinstance(image, np.ndarray):
        image = image.compute()
    arr = np.asarray(image)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    return arr


def resolve_channel_axis(ndim: int, channel_axis: int | None | str) -> int | None:
    """The channel axis as a non-negative index (or None). "auto": (H, W) has none, (C, H, W) axis 0."""
    if channel_axis == AUTO:
        if ndim == 2:
            return None
        if ndim == 3:
            return 0
        raise ValueError(
            f"image has {ndim} axes; pass channel_axis explicitly (an int, or None for single-channel "
            f"stacks such as (Z, Y, X) or (T, Z, Y, X))"
        )
    if channel_axis is None:
        if ndim < 2:
            raise ValueError(f"image must have at least 2 axes (Y, X), got {ndim}")
        return None
    if not isinstance(channel_axis, int | np.integer):
        raise TypeError(f"channel_axis must be an int, None or 'auto', got {channel_axis!r}")
    axis = int(channel_axis) % ndim if -ndim <= channel_axis < ndim else None
    if axis is None or ndim < 3:
        raise ValueError(f"channel_axis {channel_axis} is invalid for an image with {ndim} axes")
    if axis >= ndim - 2:
        raise ValueError(
            f"channel_axis {channel_axis} points at a spatial axis of an image with {ndim} axes; "
            f"the last two axes must be Y and X (move the channel axis first)"
        )
    return axis


def to_stack(image, channel_axis: int | None | str = AUTO) -> tuple[np.ndarray, tuple[int, ...]]:
    """(S, C, H, W) view of `image` and the shape of its stack axes (``()`` for a single 2D image)."""
    arr = as_numpy(image)
    axis = resolve_channel_axis(arr.ndim, channel_axis)
    if axis is None:
        arr = arr[..., None, :, :]
    else:
        arr = np.moveaxis(arr, axis, -3)
    if arr.dtype.kind == "f":
        bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise ValueError(
                f"image {arr.shape} has {bad} NaN or infinite pixels; replace them (e.g. np.nan_to_num) "
                f"or crop them away before segmenting"
            )
    lead = arr.shape[:-3]
    return arr.reshape(-1, *arr.shape[-3:]), tuple(lead)


def spatial_shape(image_shape: tuple[int, ...], channel_axis: int | None) -> tuple[int, ...]:
    """Shape of `image_shape` without its channel axis (what scribbles and labels must have)."""
    return tuple(s for i, s in enumerate(image_shape) if i != channel_axis)


@dataclass(frozen=True)
class ChannelNorm:
    """Per-channel intensity scaling fixed at fit time, so every slice and image is scaled alike.

    Intensities map ``lo -> 0`` and ``hi -> 1`` (percentiles of the fit image), then the backbone
    input is z-scored with ``mean`` / ``std`` of the scaled fit image (Cell-DINO-style z-score).
    """

    lo: tuple[float, ...]
    hi: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_channels(self) -> int:
        return len(self.lo)

    @classmethod
    def from_stack(cls, stack: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.8)) -> ChannelNorm:
        """Statistics of a (S, C, H, W) stack, from at most ~4M pixels per channel."""
        step = max(1, int(np.ceil(np.sqrt(stack[:, 0].size / 4_000_000))))
        sub = stack[:, :, ::step, ::step].astype(np.float32)
        lo, hi, mean, std = [], [], [], []
        for c in range(sub.shape[1]):
            ch = sub[:, c]
            a, b = np.percentile(ch, percentiles)
            b = b if b > a else a + 1.0
            scaled = np.clip((ch - a) / (b - a), 0.0, 1.0)
            lo.append(float(a))
            hi.append(float(b))
            mean.append(float(scaled.mean()))
            std.append(float(max(scaled.std(), 1e-3)))
        return cls(tuple(lo), tuple(hi), tuple(mean), tuple(std))

    def scale(self, chw: np.ndarray) -> np.ndarray:
        """(C, H, W) raw slice to float32 in [0, 1] (clipped)."""
        if chw.shape[0] != self.num_channels:
            raise ValueError(
                f"image has {chw.shape[0]} channels but the segmenter was fitted on {self.num_channels}; "
                f"use an image with the same channels (check channel_axis)"
            )
        lo = np.asarray(self.lo, np.float32)[:, None, None]
        hi = np.asarray(self.hi, np.float32)[:, None, None]
        return np.clip((chw.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)

    def standardize(self, scaled: np.ndarray) -> np.ndarray:
        """Scaled (C, H, W) slice to the backbone's z-scored input."""
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        return (scaled - mean) / std

    def to_dict(self) -> dict:
        return {"lo": list(self.lo), "hi": list(self.hi), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> ChannelNorm:
        return cls(*(tuple(float(v) for v in d[k]) for k in ("lo", "hi", "mean", "std")))
