"""Strategy 3: Bag-of-Channels.

One single-channel backbone encodes every channel as its own image: (B, C, H, W) becomes
(B*C, 1, H, W). Per-channel outputs are concatenated along the feature axis in channel order, so
the CLS embedding of a C-channel image is C * D wide and one model serves any channel set.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .vision_transformer import VisionTransformer


def _fold(t: torch.Tensor, b: int, c: int) -> torch.Tensor:
    """(B*C, ..., D) per-channel outputs to (B, ..., C*D), channel-major along the last axis."""
    t = t.reshape(b, c, *t.shape[1:])
    return t.movedim(1, -2).flatten(-2)


class BagOfChannels(nn.Module):
    def __init__(self, backbone: VisionTransformer):
        super().__init__()
        if backbone.arch.in_chans != 1:
            raise ValueError(
                f"Bag-of-Channels needs a 1-channel backbone, got in_chans={backbone.arch.in_chans}"
            )
        self.backbone = backbone
        self.patch_size = backbone.patch_size
        self.embed_dim = backbone.embed_dim
        self.num_register_tokens = backbone.num_register_tokens

    @property
    def arch(self):
        return self.backbone.arch

    def feature_dim(self, num_channels: int) -> int:
        return num_channels * self.embed_dim

    def forward_features(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict:
        b, c = x.shape[:2]
        flat = x.reshape(b * c, 1, *x.shape[2:])
        flat_masks = masks.repeat_interleave(c, dim=0) if masks is not None else None
        out = self.backbone.forward_features(flat, flat_masks)
        folded = {k: _fold(v, b, c) for k, v in out.items() if k != "masks"}
        folded["masks"] = masks
        return folded

    def forward_features_list(self, xs: list[torch.Tensor], masks_list=None, pack: bool = True) -> list[dict]:
        masks_list = masks_list or [None] * len(xs)
        flats = [x.reshape(x.shape[0] * x.shape[1], 1, *x.shape[2:]) for x in xs]
        flat_masks = [
            m.repeat_interleave(x.shape[1], 0) if m is not None else None for x, m in zip(xs, masks_list)
        ]
        outs = self.backbone.forward_features_list(flats, flat_masks, pack)
        result = []
        for x, m, out in zip(xs, masks_list, outs):
            folded = {k: _fold(v, x.shape[0], x.shape[1]) for k, v in out.items() if k != "masks"}
            folded["masks"] = m
            result.append(folded)
        return result

    def get_intermediate_layers(
        self,
        x: torch.Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple:
        b, c = x.shape[:2]
        flat = x.reshape(b * c, 1, *x.shape[2:])
        outs = self.backbone.get_intermediate_layers(flat, n, reshape, True, norm)
        result = []
        for patches, cls in outs:
            if reshape:  # (B*C, D, h, w) -> (B, C*D, h, w)
                patches = patches.reshape(b, c * patches.shape[1], *patches.shape[2:])
            else:
                patches = _fold(patches, b, c)
            result.append((patches, _fold(cls, b, c)))
        if return_class_token:
            return tuple(result)
        return tuple(p for p, _ in result)

    def forward(self, x: torch.Tensor, masks: torch.Tensor | None = None, is_training: bool = False):
        out = self.forward_features(x, masks)
        return out if is_training else out["x_norm_clstoken"]
