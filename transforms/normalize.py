"""Per-channel intensity normalisation: percentile, z-score, dataset statistics, dtype range, identity.

Every mode is an affine map per image and channel, ``(x - offset) / scale``. Splitting the fit
(`stats`) from the application (`apply`) lets MultiCrop fit on the whole field once and apply the
map to each small crop, which is exact because cropping and interpolation are linear.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._utils import dtype_max, to_float

MODES = ("identity", "percentile", "zscore", "dataset", "range")
_QUANTILE_MAX_NUMEL = 1 << 24  # torch.quantile refuses larger inputs
_INT_SUB = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)  # int - float32 -> float32


def _quantiles(flat: torch.Tensor, qs: Sequence[float]) -> torch.Tensor:
    """Quantiles (linear interpolation, as torch.quantile) along the last axis of (R, N): (len(qs), R).

    Integer data with a small value range (uint8, uint16) goes through an exact per-row
    histogram, which is several times faster than sorting.
    """
    if not flat.is_floating_point():
        # a contiguous copy we own (uint16/uint32 lack min/max kernels); int32 where values fit
        small = flat.dtype in (torch.uint8, torch.int8, torch.int16, torch.uint16, torch.int32)
        own = flat.to(torch.int32 if small else torch.int64, copy=True, memory_format=torch.contiguous_format)
        lo, hi = (int(v) for v in torch.aminmax(own))
        if hi - lo < 1 << 17 and own.shape[0] * (hi - lo + 1) < 1 << 31:
            return _histogram_quantiles(own.sub_(lo), hi - lo + 1, qs) + lo
        flat = own.double()
    q = torch.tensor(list(qs), dtype=flat.dtype, device=flat.device)
    rows = max(1, _QUANTILE_MAX_NUMEL // max(flat.shape[-1], 1))
    parts = [torch.quantile(flat[i : i + rows], q, dim=-1) for i in range(0, flat.shape[0], rows)]
    return torch.cat(parts, dim=-1).float()


def _histogram_quantiles(values: torch.Tensor, bins: int, qs: Sequence[float]) -> torch.Tensor:
    """Exact quantiles of non-negative integers < `bins` per row, from cumulative counts (`values`
    is a contiguous integer tensor the caller owns: it is overwritten)."""
    r, n = values.shape
    offsets = torch.arange(r, device=values.device, dtype=values.dtype)[:, None] * bins
    counts = torch.bincount(values.add_(offsets).flatten(), minlength=r * bins).view(r, bins)
    cdf = counts.cumsum(dim=1)  # cdf[v] = how many values <= v
    out = []
    for q in qs:
        pos = q * (n - 1)
        k_lo, k_hi = int(pos), min(int(pos) + 1, n - 1)
        # the k-th smallest value (0-based) is the first v with cdf[v] >= k + 1
        ks = torch.tensor([[k_lo + 1, k_hi + 1]], device=values.device).expand(r, 2).contiguous()
        v = torch.searchsorted(cdf, ks).to(torch.float64)
        out.append(v[:, 0] + (pos - k_lo) * (v[:, 1] - v[:, 0]))
    return torch.stack(out).float()


class Normalize:
    """Per-image, per-channel normalisation to float32.

    Modes: ``percentile`` maps the `low`/`high` percentiles to 0/1 (optionally clipped);
    ``zscore`` subtracts the mean and divides by the std of each channel ("self-normalisation");
    ``dataset`` uses per-channel `mean`/`std` supplied by the data layer; ``range`` divides by the
    integer dtype's maximum (255, 65535); ``identity`` only converts to float32. Constant channels
    map to 0 (the scale is clamped at `eps`), never NaN.
    """

    def __init__(
        self,
        mode: str = "identity",
        low: float = 1.0,
        high: float = 99.8,
        clip: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        eps: float = 1e-6,
        max_samples: int | None = 65536,
    ):
        if mode not in MODES:
            raise ValueError(f"normalisation mode must be one of {MODES}, got {mode!r}")
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got low={low}, high={high}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if mode == "dataset":
            if mean is None or std is None or len(mean) != len(std) or len(mean) == 0:
                raise ValueError(
                    f"mode 'dataset' needs per-channel mean and std of equal length, "
                    f"got mean={mean}, std={std}"
                )
            if any(s <= 0 or not math.isfinite(s) for s in std):
                raise ValueError(f"dataset std must be finite and > 0 for every channel, got {list(std)}")
        if max_samples is not None and max_samples < 2:
            raise ValueError(f"max_samples must be >= 2 or None, got {max_samples}")
        self.mode, self.low, self.high, self.clip = mode, float(low), float(high), bool(clip)
        self.mean = None if mean is None else [float(v) for v in mean]
        self.std = None if std is None else [float(v) for v in std]
        self.eps, self.max_samples = float(eps), max_samples

    def __repr__(self) -> str:
        return f"Normalize(mode={self.mode!r})"

    def stats(
        self, x: torch.Tensor, channel_index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image, per-channel (offset, scale) of a (B, C, H, W) tensor, each (B, C, 1, 1) float32.

        `channel_index` (B, C) names the original channel of each plane (Bag-of-Channels), so
        dataset statistics are looked up per channel identity.
        """
        b, c = x.shape[:2]
        dev = x.device
        if self.mode == "identity":
            return torch.zeros(b, c, 1, 1, device=dev), torch.ones(b, c, 1, 1, device=dev)
        if self.mode == "range":
            return torch.zeros(b, c, 1, 1, device=dev), torch.full(
                (b, c, 1, 1), dtype_max(x.dtype), device=dev
            )
        if self.mode == "dataset":
            mean, std = torch.tensor(self.mean, device=dev), torch.tensor(self.std, device=dev)
            if channel_index is not None:
                idx = channel_index.to(dev).reshape(b, c)
                if int(idx.max()) >= len(self.mean):
                    raise ValueError(
                        f"dataset normalisation has {len(self.mean)} channel statistics, "
                        f"channel index {int(idx.max())} is out of range"
                    )
                return mean[idx].view(b, c, 1, 1), std[idx].view(b, c, 1, 1)
            if len(self.mean) != c:
                raise ValueError(
                    f"dataset normalisation has {len(self.mean)} channel statistics but the image has "
                    f"{c} channels (shape {tuple(x.shape)})"
                )
            return mean.view(1, c, 1, 1).expand(b, c, 1, 1), std.view(1, c, 1, 1).expand(b, c, 1, 1)
        flat = x.reshape(b * c, -1)
        n = flat.shape[-1]
        if self.max_samples is not None and n > self.max_samples:
            flat = flat[:, :: math.ceil(n / self.max_samples)]  # evenly strided subsample
        if self.mode == "zscore":
            std, mean = torch.std_mean(to_float(flat), dim=-1, correction=0)
            lo, scale = mean, std
        else:
            lo, hi = _quantiles(flat, (self.low / 100.0, self.high / 100.0))
            scale = hi - lo
        return lo.view(b, c, 1, 1), scale.clamp(min=self.eps).view(b, c, 1, 1)

    def apply(self, x: torch.Tensor, offset: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Apply fitted statistics; `x` (B, C, H, W) of any dtype, returns float32."""
        # one pass to float (integers convert inside the subtraction), then divide in place
        out = torch.sub(x, offset) if x.dtype in _INT_SUB else to_float(x) - offset
        out = out.div_(scale) if torch.broadcast_shapes(out.shape, scale.shape) == out.shape else out / scale
        if self.clip and self.mode in ("percentile", "range"):
            out = out.clamp_(0.0, 1.0)
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Fit and apply on a (C, H, W) or (B, C, H, W) tensor."""
        single = x.ndim == 3
        xb = x.unsqueeze(0) if single else x
        if xb.ndim != 4:
            raise ValueError(f"Normalize expects (C, H, W) or (B, C, H, W), got shape {tuple(x.shape)}")
        out = self.apply(xb, *self.stats(xb))
        return out[0] if single else out
