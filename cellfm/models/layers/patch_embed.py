"""Patch embedding: (B, C, H, W) images to (B, N, D) tokens with one strided convolution."""

from __future__ import annotations

import torch
from torch import nn


class PatchEmbed(nn.Module):
    """Conv2d with kernel = stride = patch size; parameter names match DINOv2 (`proj.weight`)."""

    def __init__(self, img_size: int = 224, patch_size: int = 14, in_chans: int = 3, embed_dim: int = 384):
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected images of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}; "
                f"the model was built for in_chans={self.in_chans}"
            )
        return self.proj(x).flatten(2).transpose(1, 2)
