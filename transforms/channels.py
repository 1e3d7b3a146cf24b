"""Channel augmentations: drop a channel, rescale a protected channel, Bag-of-Channels sampling."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._utils import check_prob, check_range, rand, uniform


def check_channels(indices: Sequence[int], num_channels: int, name: str) -> list[int]:
    """Validate channel indices against a channel count; errors name the offending index."""
    out = [int(i) for i in indices]
    bad = [i for i in out if not 0 <= i < num_channels]
    if bad:
        raise ValueError(f"{name} {bad} out of range for an image with {num_channels} channels")
    return out


class DropChannel:
    """With probability p per crop, zero one channel chosen uniformly among the non-protected ones.

    Never drops a protected channel and never all channels: single-channel crops, or crops whose
    channels are all protected, pass unchanged.
    """

    def __init__(self, p: float = 0.0, protected: Sequence[int] = ()):
        check_prob(p, "drop channel p")
        self.p, self.protected = p, [int(i) for i in protected]

    def droppable(self, num_channels: int) -> list[int]:
        """Channels this op may drop in a `num_channels` image."""
        if num_channels < 2:
            return []
        return [c for c in range(num_channels) if c not in self.protected]

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n, c = x.shape[:2]
        u = rand((n, 2), generator, torch.device("cpu"))
        candidates = self.droppable(c)
        if not candidates:
            return x
        rows = (u[:, 0] < self.p).nonzero().flatten()
        if not rows.numel():
            return x
        cols = torch.tensor(candidates)[(u[rows, 1] * len(candidates)).long().clamp(max=len(candidates) - 1)]
        x = x.clone()
        x[rows.to(x.device), cols.to(x.device)] = 0.0
        return x


class RescaleChannel:
    """With probability p per crop, multiply the given channels by one factor uniform in `factor_range`."""

    def __init__(
        self, p: float = 0.0, channels: Sequence[int] = (), factor_range: tuple[float, float] = (0.5, 1.5)
    ):
        check_prob(p, "rescale channel p")
        self.p, self.channels = p, [int(i) for i in channels]
        self.factor_range = check_range(factor_range, "rescale factor_range", low=0.0)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n = x.shape[0]
        u = rand((n,), generator, torch.device("cpu"))
        f = uniform(*self.factor_range, (n,), generator, torch.device("cpu"))
        if not self.channels:
            return x
        check_channels(self.channels, x.shape[1], "rescaled channels")
        rows = (u < self.p).nonzero().flatten()
        if not rows.numel():
            return x
        x = x.clone()
        r, ch = rows.to(x.device), torch.tensor(self.channels, device=x.device)
        x[r[:, None], ch[None, :]] = x[r[:, None], ch[None, :]] * f[rows].to(x.device)[:, None, None, None]
        return x


def sample_channel(
    num_channels: int, generator: torch.Generator | None = None, weights: Sequence[float] | None = None
) -> int:
    """Bag-of-Channels: one channel index, uniform or proportional to `weights`."""
    if weights is None:
        w = torch.ones(num_channels)
    else:
        if len(weights) != num_channels:
            raise ValueError(
                f"channel weights have {len(weights)} entries but the image has {num_channels} channels"
            )
        w = torch.tensor([float(v) for v in weights])
        if bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"channel weights must be >= 0 with a positive sum, got {list(weights)}")
    cum = torch.cumsum(w, 0) / w.sum()
    u = rand((1,), generator, torch.device("cpu"))
    return min(int(torch.searchsorted(cum, u).item()), num_channels - 1)


def split_channels(x: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
    """Bag-of-Channels, exhaustive: every channel of (C, H, W) as its own (1, H, W) image with its index."""
    return [(x[c : c + 1], c) for c in range(x.shape[-3])]
