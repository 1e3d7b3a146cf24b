"""Strategy 4: channel tokens (after ChannelViT, Bao et al. 2024, implemented from the paper).

Every channel is cut into patches by one shared single-channel projection; each patch token gets
the positional embedding of its location plus a learned embedding of its channel, and attention
runs across all C * N tokens, so the model relates channels at every location. Inputs may carry any
subset of the channels the model knows, named by `channel_ids`.

Outputs: `x_norm_patchtokens` is the per-location mean over channels, (B, N, D), so spatial
consumers see the usual grid; `x_norm_channel_patchtokens` keeps (B, C, N, D).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.init import trunc_normal_

from .vision_transformer import VisionTransformer, ViTArch


class ChannelPatchEmbed(nn.Module):
    """Shared 1-channel Conv2d per channel plus a learned channel embedding (`channel_embed`)."""

    def __init__(self, patch_size: int, num_channels: int, embed_dim: int):
        super().__init__()
        self.num_channels = num_channels
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.channel_embed = nn.Parameter(torch.zeros(num_channels, embed_dim))
        trunc_normal_(self.channel_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, N, D) without channel embeddings (added by the backbone)."""
        b, c = x.shape[:2]
        t = self.proj(x.reshape(b * c, 1, *x.shape[2:])).flatten(2).transpose(1, 2)
        return t.reshape(b, c, *t.shape[1:])


class ChannelTokensViT(VisionTransformer):
    def _make_patch_embed(self, arch: ViTArch) -> nn.Module:
        return ChannelPatchEmbed(arch.patch_size, arch.in_chans, arch.embed_dim)

    def _channel_ids(self, c: int, channel_ids: Sequence[int] | torch.Tensor | None, device) -> torch.Tensor:
        known = self.arch.in_chans
        if channel_ids is None:
            if c > known:
                raise ValueError(f"input has {c} channels but the model knows {known}; pass channel_ids")
            return torch.arange(c, device=device)
        ids = torch.as_tensor(channel_ids, device=device, dtype=torch.long)
        if ids.numel() != c:
            raise ValueError(f"channel_ids names {ids.numel()} channels but the input has {c}")
        if ids.min() < 0 or ids.max() >= known:
            raise ValueError(f"channel_ids {ids.tolist()} outside the model's {known} channels")
        return ids

    def prepare_tokens_with_masks(self, x, masks=None, channel_ids=None):
        x = self._check_and_pad(x)
        b, c = x.shape[:2]
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        tokens = self.patch_embed(x)  # (B, C, N, D)
        if masks is not None:
            if masks.shape != (b, tokens.shape[2]):
                raise ValueError(f"masks must have shape {(b, tokens.shape[2])}, got {tuple(masks.shape)}")
            fill = self.mask_token.to(tokens.dtype)
            tokens = torch.where(masks[:, None, :, None], fill, tokens)
        pos = self.interpolate_pos_encoding(grid).to(tokens.dtype)
        ids = self._channel_ids(c, channel_ids, x.device)
        tokens = (
            tokens + pos[:, None, 1:] + self.patch_embed.channel_embed[ids][None, :, None].to(tokens.dtype)
        )
        cls = self.cls_token.expand(b, -1, -1) + pos[:, :1]
        parts = [cls]
        if self.register_tokens is not None:
            parts.append(self.register_tokens.expand(b, -1, -1))
        parts.append(tokens.flatten(1, 2))
        return torch.cat(parts, dim=1)

    def forward_features(self, x, masks=None, channel_ids=None) -> dict:
        tokens = self.prepare_tokens_with_masks(x, masks, channel_ids)
        for blk in self.blocks:
            tokens = blk(tokens)
        return self._named_outputs(tokens, masks, x)

    def _named_outputs(self, x, masks, images) -> dict:
        out = super()._named_outputs(x, masks, images)
        patches = out["x_norm_patchtokens"]
        per_channel = patches.reshape(patches.shape[0], images.shape[1], -1, patches.shape[-1])
        out["x_norm_channel_patchtokens"] = per_channel
        out["x_norm_patchtokens"] = per_channel.mean(dim=1)
        return out

    def get_intermediate_layers(self, x, n=1, reshape=False, return_class_token=False, norm=True):
        outs = super().get_intermediate_layers(x, n, False, True, norm)
        b, c = x.shape[:2]
        result = []
        for patches, cls in outs:
            patches = patches.reshape(b, c, -1, patches.shape[-1]).mean(dim=1)
            if reshape:
                gh, gw = self._patch_grid(x)
                patches = patches.reshape(b, gh, gw, -1).permute(0, 3, 1, 2).contiguous()
            result.append((patches, cls))
        return tuple(result) if return_class_token else tuple(p for p, _ in result)
