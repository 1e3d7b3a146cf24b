"""Shared helpers: input checks, dtype conversion and device-agnostic random draws."""

from __future__ import annotations

import numpy as np
import torch

INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.uint16, torch.int32, torch.uint32, torch.int64)


def as_tensor(image: torch.Tensor | np.ndarray, name: str = "image") -> torch.Tensor:
    """Accept a torch tensor or numpy array (any numeric dtype) and return a tensor without copying."""
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint32:
            image = image.astype(np.int64)
        return torch.from_numpy(np.ascontiguousarray(image))
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(image).__name__}")
    if image.dtype == torch.bool or image.is_complex():
        raise TypeError(f"{name} must be a real numeric image, got dtype {image.dtype}")
    return image


def check_rank(x: torch.Tensor, ndim: int, name: str = "image") -> None:
    """Raise naming the shape when `x` does not have `ndim` dims ((C, H, W) or (B, C, H, W))."""
    layout = {3: "(C, H, W)", 4: "(B, C, H, W)"}[ndim]
    if x.ndim != ndim:
        hint = " (add a channel axis for a 2-D image: x[None])" if x.ndim == 2 else ""
        raise ValueError(f"{name} must have shape {layout}, got shape {tuple(x.shape)}{hint}")
    if min(x.shape[-2:]) < 1 or x.shape[-3] < 1:
        raise ValueError(f"{name} has an empty axis: shape {tuple(x.shape)}")


def check_finite(
    x: torch.Tensor, policy: str = "error", fill: float = 0.0, name: str = "image"
) -> torch.Tensor:
    """NaN/Inf pixels: raise (policy "error") or replace them by `fill` (policy "replace")."""
    if not x.is_floating_point():
        return x
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return x
    if policy == "replace":
        return torch.where(finite, x, torch.as_tensor(fill, dtype=x.dtype, device=x.device))
    bad = int((~finite).sum())
    raise ValueError(
        f"{name} of shape {tuple(x.shape)} has {bad} NaN/Inf pixels; clean the data or set "
        f"nan_policy='replace'"
    )


def to_float(x: torch.Tensor) -> torch.Tensor:
    """Any numeric dtype to float32 (uint16/uint32 go through int32/int64 where needed)."""
    if x.dtype == torch.float32:
        return x
    if x.dtype in (torch.uint16, torch.uint32):
        x = x.to(torch.int32 if x.dtype == torch.uint16 else torch.int64)
    return x.float()


def dtype_max(dtype: torch.dtype) -> float:
    """Largest value of an integer dtype; 1.0 for floating dtypes (assumed already in [0, 1])."""
    if dtype in INT_DTYPES:
        return float(torch.iinfo(dtype).max)
    return 1.0


def rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) on `device`, drawn from `generator` wherever that generator lives."""
    gdev = generator.device if generator is not None else device
    out = torch.rand(shape, generator=generator, device=gdev)
    return out.to(device)


def randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Standard normal on `device`, drawn from `generator` wherever that generator lives."""
    gdev = generator.device if generator is not None else device
    out = torch.randn(shape, generator=generator, device=gdev)
    return out.to(device)


def uniform(
    lo: float, hi: float, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Uniform [lo, hi) draws."""
    return lo + (hi - lo) * rand(shape, generator, device)


def randint(high: int, generator: torch.Generator | None) -> int:
    """One integer in [0, high) drawn on the generator's device."""
    gdev = generator.device if generator is not None else "cpu"
    return int(torch.randint(high, (1,), generator=generator, device=gdev))


def check_prob(p: float, name: str) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")


def check_range(r: tuple[float, float], name: str, low: float | None = None) -> tuple[float, float]:
    """Validate an ordered (min, max) pair, optionally bounded below."""
    r = tuple(float(v) for v in r)
    if len(r) != 2 or r[0] > r[1]:
        raise ValueError(f"{name} must be an ordered pair (min, max), got {r}")
    if low is not None and r[0] < low:
        raise ValueError(f"{name} must be >= {low}, got {r}")
    return r  # type: ignore[return-value]
