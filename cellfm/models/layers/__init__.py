"""Transformer building blocks, one concept per file; parameter names match DINOv2."""

from .attention import BACKENDS, PACKED_ATTENTION, Attention
from .block import Block
from .drop_path import drop_path, subset_residual
from .layer_scale import LayerScale
from .mlp import Mlp
from .patch_embed import PatchEmbed
from .swiglu import SwiGLU, swiglu_hidden_dim

__all__ = [
    "BACKENDS",
    "PACKED_ATTENTION",
    "Attention",
    "Block",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "SwiGLU",
    "drop_path",
    "subset_residual",
    "swiglu_hidden_dim",
]
