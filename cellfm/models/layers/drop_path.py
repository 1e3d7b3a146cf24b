"""Stochastic depth, two ways.

`drop_path` zeroes the residual of whole samples and rescales the kept ones (the textbook form).
`subset_residual` is the efficient form DINOv2 uses for rates above 0.1: the residual branch runs
only on a random subset of max(int(B * (1 - p)), 1) samples and is added back scaled by B / subset,
so dropped samples cost nothing. Both are unbiased: E[output] equals the un-dropped output.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def drop_path(residual: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Zero each sample's residual with probability p, scale the rest by 1 / (1 - p)."""
    if p <= 0.0 or not training:
        return residual
    keep = 1.0 - p
    shape = (residual.shape[0],) + (1,) * (residual.ndim - 1)
    mask = residual.new_empty(shape).bernoulli_(keep)
    return residual * mask.div_(keep)


def subset_residual(
    x: torch.Tensor,
    branch: Callable[[torch.Tensor], torch.Tensor],
    p: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """x + branch(x) computed for a random subset of samples only, rescaled to stay unbiased."""
    b = x.shape[0]
    subset = max(int(b * (1.0 - p)), 1)
    index = torch.randperm(b, device=x.device, generator=generator)[:subset]
    residual = branch(x[index])
    out = torch.index_add(x.flatten(1), 0, index, residual.flatten(1).to(x.dtype), alpha=b / subset)
    return out.view_as(x)
