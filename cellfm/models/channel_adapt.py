"""Strategy 2: start a C-channel model from 3-channel (RGB) patch-embedding weights.

Each new channel's filter is the mean of the RGB filters, scaled by 3 / C. With this choice a
grey image copied into all C channels gives exactly the response the RGB model gives to the same
grey image copied into R, G and B, so an official checkpoint starts from its natural-image
behaviour whatever the channel count (e.g. 5-channel Cell Painting, 1-channel nuclei).
"""

from __future__ import annotations

import torch


def adapt_patch_embed_weight(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """(D, C_src, p, p) conv weights to (D, in_chans, p, p) by the mean-filter rule above."""
    if weight.ndim != 4:
        raise ValueError(f"patch_embed.proj.weight must be 4-D (D, C, p, p), got {tuple(weight.shape)}")
    src = weight.shape[1]
    if in_chans == src:
        return weight.clone()
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_chans, 1, 1) * (src / in_chans)
