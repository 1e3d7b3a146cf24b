"""Named architectures: the DINOv2 ViT family and the released hub checkpoints."""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from .bag_of_channels import BagOfChannels
from .channel_tokens import ChannelTokensViT
from .vision_transformer import VisionTransformer, ViTArch

CHANNEL_STRATEGIES = ("fixed", "bag_of_channels", "channel_tokens")

# width, depth, heads, ffn
SIZES: dict[str, tuple[int, int, int, str]] = {
    "tiny": (192, 12, 3, "mlp"),
    "small": (384, 12, 6, "mlp"),
    "base": (768, 12, 12, "mlp"),
    "large": (1024, 24, 16, "mlp"),
    "giant2": (1536, 40, 24, "swiglu"),
}
PATCH_SIZES = (8, 14, 16)

# The released DINOv2 backbones: built at 518 px (37 x 37 positions), LayerScale 1.0.
HUB_MODELS: dict[str, ViTArch] = {}
for _letter, _size in {"s": "small", "b": "base", "l": "large", "g": "giant2"}.items():
    _d, _depth, _heads, _ffn = SIZES[_size]
    _base = ViTArch(_d, _depth, _heads, 14, 518, 3, 4.0, _ffn, init_values=1.0)
    HUB_MODELS[f"dinov2_vit{_letter}14"] = _base
    HUB_MODELS[f"dinov2_vit{_letter}14_reg"] = replace(
        _base, num_register_tokens=4, interpolate_offset=0.0, interpolate_antialias=True
    )


def vit_arch(size: str = "small", patch_size: int = 14, **overrides) -> ViTArch:
    """Architecture of a named size ("tiny", "small", "base", "large", "giant2") at a patch size."""
    if size not in SIZES:
        raise ValueError(f"unknown ViT size {size!r}; choose one of {sorted(SIZES)}")
    if patch_size not in PATCH_SIZES and not overrides.pop("allow_any_patch_size", False):
        raise ValueError(f"patch_size must be one of {PATCH_SIZES}, got {patch_size}")
    d, depth, heads, ffn = SIZES[size]
    fields = {"embed_dim": d, "depth": depth, "num_heads": heads, "ffn": ffn, "patch_size": patch_size}
    fields.update(overrides)
    if fields.get("num_register_tokens"):
        # Register models follow the later DINOv2 code: size-based, antialiased resampling.
        fields.setdefault("interpolate_offset", 0.0)
        fields.setdefault("interpolate_antialias", True)
    return ViTArch(**fields)


def vit_small(patch_size: int = 14, **kwargs) -> VisionTransformer:
    return _build("small", patch_size, **kwargs)


def vit_base(patch_size: int = 14, **kwargs) -> VisionTransformer:
    return _build("base", patch_size, **kwargs)


def vit_large(patch_size: int = 14, **kwargs) -> VisionTransformer:
    return _build("large", patch_size, **kwargs)


def vit_giant2(patch_size: int = 14, **kwargs) -> VisionTransformer:
    return _build("giant2", patch_size, **kwargs)


_RUNTIME_KEYS = ("drop_path_rate", "drop_path_uniform", "pad_mode")


def _build(size: str, patch_size: int, **kwargs) -> VisionTransformer:
    runtime = {k: kwargs.pop(k) for k in _RUNTIME_KEYS if k in kwargs}
    return VisionTransformer(vit_arch(size, patch_size, **kwargs), **runtime)


def build_backbone(arch: ViTArch, **runtime) -> nn.Module:
    """The backbone for `arch`, wrapped or specialised by its channel strategy.

    `runtime` takes drop_path_rate, drop_path_uniform and pad_mode (not part of the weights).
    """
    if arch.channel_strategy == "fixed":
        return VisionTransformer(arch, **runtime)
    if arch.channel_strategy == "bag_of_channels":
        if arch.in_chans != 1:
            raise ValueError(f"bag_of_channels needs in_chans=1 (one channel per image), got {arch.in_chans}")
        return BagOfChannels(VisionTransformer(arch, **runtime))
    if arch.channel_strategy == "channel_tokens":
        return ChannelTokensViT(arch, **runtime)
    raise ValueError(
        f"unknown channel_strategy {arch.channel_strategy!r}; choose one of {CHANNEL_STRATEGIES}"
    )
