"""Backbones: the DINOv2 ViT family and the channel strategies for multi-channel microscopy."""

from .bag_of_channels import BagOfChannels
from .channel_adapt import adapt_patch_embed_weight
from .channel_tokens import ChannelTokensViT
from .factory import (
    CHANNEL_STRATEGIES,
    HUB_MODELS,
    SIZES,
    build_backbone,
    vit_arch,
    vit_base,
    vit_giant2,
    vit_large,
    vit_small,
)
from .pos_embed import interpolate_pos_embed
from .vision_transformer import VisionTransformer, ViTArch, set_attention_backend, set_packed_attention

__all__ = [
    "CHANNEL_STRATEGIES",
    "BagOfChannels",
    "ChannelTokensViT",
    "adapt_patch_embed_weight",
    "build_backbone",
    "HUB_MODELS",
    "SIZES",
    "VisionTransformer",
    "ViTArch",
    "interpolate_pos_embed",
    "set_attention_backend",
    "set_packed_attention",
    "vit_arch",
    "vit_base",
    "vit_giant2",
    "vit_large",
    "vit_small",
]
