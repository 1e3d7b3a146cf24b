"""The DINOv2 vision transformer, for any number of input channels.

State-dict keys match the official checkpoints exactly (`cls_token`, `pos_embed`,
`register_tokens`, `mask_token`, `patch_embed.proj.*`, `blocks.{i}.*`, `norm.*`), so official
weights load with `strict=True`. Tokens are ordered [CLS, registers, patches]; registers carry no
positional embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.init import trunc_normal_

from .layers import PACKED_ATTENTION, Attention, Block, PatchEmbed
from .pos_embed import interpolate_pos_embed

PAD_MODES = (None, "constant", "reflect", "replicate")


@dataclass(frozen=True)
class ViTArch:
    """Everything needed to rebuild a backbone; saved as checkpoint metadata."""

    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    patch_size: int = 14
    img_size: int = 224
    in_chans: int = 3
    mlp_ratio: float = 4.0
    ffn: str = "mlp"
    qkv_bias: bool = True
    proj_bias: bool = True
    ffn_bias: bool = True
    init_values: float | None = 1e-5
    num_register_tokens: int = 0
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False
    # "fixed" (C input channels), "bag_of_channels" (1-channel model over each channel),
    # "channel_tokens" (per-channel tokens + channel embedding; in_chans = channels known).
    channel_strategy: str = "fixed"

    def to_dict(self) -> dict:
        return asdict(self)


class VisionTransformer(nn.Module):
    """ViT backbone with DINOv2's named-output contract (`forward_features`)."""

    def __init__(
        self,
        arch: ViTArch | None = None,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = True,
        pad_mode: str | None = None,
        **arch_overrides,
    ):
        super().__init__()
        arch = ViTArch(**{**(asdict(arch) if arch else {}), **arch_overrides})
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        self.arch = arch
        self.pad_mode = pad_mode
        self.embed_dim = self.num_features = arch.embed_dim
        self.patch_size = arch.patch_size
        self.num_heads = arch.num_heads
        self.n_blocks = arch.depth
        self.num_register_tokens = arch.num_register_tokens
        self.interpolate_offset = arch.interpolate_offset
        self.interpolate_antialias = arch.interpolate_antialias

        self.patch_embed = self._make_patch_embed(arch)
        num_patches = (arch.img_size // arch.patch_size) ** 2
        d = arch.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, d))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, arch.num_register_tokens, d)) if arch.num_register_tokens else None
        )
        if drop_path_uniform:
            rates = [drop_path_rate] * arch.depth
        else:
            rates = torch.linspace(0, drop_path_rate, arch.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(
                d,
                arch.num_heads,
                mlp_ratio=arch.mlp_ratio,
                ffn=arch.ffn,
                qkv_bias=arch.qkv_bias,
                proj_bias=arch.proj_bias,
                ffn_bias=arch.ffn_bias,
                init_values=arch.init_values,
                drop_path_rate=rate,
            )
            for rate in rates
        )
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, d))
        self.init_weights()

    def _make_patch_embed(self, arch: ViTArch) -> nn.Module:
        return PatchEmbed(arch.img_size, arch.patch_size, arch.in_chans, arch.embed_dim)

    def init_weights(self) -> None:
        """DINOv2 initialisation: trunc-normal(0.02) positions and Linear weights, tiny CLS/registers."""
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        nn.init.zeros_(self.mask_token)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # -- tokens -----------------------------------------------------------------------------
    def _check_and_pad(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected a batch of images (B, C, H, W), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        p = self.patch_size
        if h % p == 0 and w % p == 0:
            return x
        if self.pad_mode is None:
            raise ValueError(
                f"image size {h}x{w} is not a multiple of the patch size {p}; crop or resize it, "
                f"or build the backbone with pad_mode='reflect' (or 'constant', 'replicate')"
            )
        return F.pad(x, (0, (-w) % p, 0, (-h) % p), mode=self.pad_mode)

    def interpolate_pos_encoding(self, grid_hw: tuple[int, int]) -> torch.Tensor:
        return interpolate_pos_embed(
            self.pos_embed, grid_hw, 1, self.interpolate_offset, self.interpolate_antialias
        )

    def prepare_tokens_with_masks(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        x = self._check_and_pad(x)
        b = x.shape[0]
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        tokens = self.patch_embed(x)
        if masks is not None:
            if masks.shape != tokens.shape[:2]:
                raise ValueError(f"masks must have shape {tuple(tokens.shape[:2])}, got {tuple(masks.shape)}")
            tokens = torch.where(masks.unsqueeze(-1), self.mask_token.to(tokens.dtype).unsqueeze(0), tokens)
        tokens = torch.cat((self.cls_token.expand(b, -1, -1), tokens), dim=1)
        tokens = tokens + self.interpolate_pos_encoding(grid).to(tokens.dtype)
        if self.register_tokens is not None:
            regs = self.register_tokens.expand(b, -1, -1)
            tokens = torch.cat((tokens[:, :1], regs, tokens[:, 1:]), dim=1)
        return tokens

    # -- outputs ----------------------------------------------------------------------------
    def _named_outputs(
        self, x: torch.Tensor, masks: torch.Tensor | None, images: torch.Tensor
    ) -> dict[str, torch.Tensor | None]:
        """The output dict from the final tokens `x` of the input batch `images`."""
        x_norm = self.norm(x)
        r = self.num_register_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1 : r + 1],
            "x_norm_patchtokens": x_norm[:, r + 1 :],
            "x_prenorm": x,
            "masks": masks,
        }

    def forward_features(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict:
        """Run the backbone; returns DINOv2's dict of normalised CLS / register / patch tokens."""
        tokens = self.prepare_tokens_with_masks(x, masks)
        for blk in self.blocks:
            tokens = blk(tokens)
        return self._named_outputs(tokens, masks, x)

    def forward_features_list(
        self, xs: list[torch.Tensor], masks_list: list[torch.Tensor | None] | None = None, pack: bool = True
    ) -> list[dict]:
        """`forward_features` for several batches of different sizes (e.g. global and local crops)
        in one pass: every block runs its linear layers once over all tokens (see Block.forward_packed).
        Equal to calling `forward_features` on each batch."""
        masks_list = masks_list or [None] * len(xs)
        if not pack:
            return [self.forward_features(x, m) for x, m in zip(xs, masks_list)]
        tokens = [self.prepare_tokens_with_masks(x, m) for x, m in zip(xs, masks_list)]
        for blk in self.blocks:
            tokens = blk(tokens)
        return [self._named_outputs(t, m, x) for t, m, x in zip(tokens, masks_list, xs)]

    def _patch_grid(self, x: torch.Tensor) -> tuple[int, int]:
        p = self.patch_size
        return -(-x.shape[-2] // p), -(-x.shape[-1] // p)

    def get_intermediate_layers(
        self,
        x: torch.Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Outputs of the last `n` blocks (or of the block indices in `n`), as in DINOv2."""
        take = range(len(self.blocks) - n, len(self.blocks)) if isinstance(n, int) else list(n)
        bad = [i for i in take if not -len(self.blocks) <= i < len(self.blocks)]
        if bad:
            raise IndexError(
                f"block indices {bad} out of range for a backbone with {len(self.blocks)} blocks"
            )
        take = {i % len(self.blocks) for i in take}
        tokens = self.prepare_tokens_with_masks(x)
        outputs = []
        for i, blk in enumerate(self.blocks):
            tokens = blk(tokens)
            if i in take:
                outputs.append(tokens)
        if norm:
            outputs = [self.norm(out) for out in outputs]
        class_tokens = [out[:, 0] for out in outputs]
        outputs = [out[:, 1 + self.num_register_tokens :] for out in outputs]
        if reshape:
            gh, gw = self._patch_grid(x)
            outputs = [o.reshape(x.shape[0], gh, gw, -1).permute(0, 3, 1, 2).contiguous() for o in outputs]
        if return_class_token:
            return tuple(zip(outputs, class_tokens))
        return tuple(outputs)

    def forward(self, x, masks=None, is_training: bool = False, pack: bool = True):
        """CLS embedding; with `is_training` the full output dict. A list of batches (e.g. global and
        local crops) goes through `forward_features_list` (packed unless `pack=False`) in one call, so
        DDP / FSDP see one forward per step, and returns a list of dicts."""
        if isinstance(x, list):
            return self.forward_features_list(x, masks, pack)
        out = self.forward_features(x, masks)
        return out if is_training else self.head(out["x_norm_clstoken"])


def set_attention_backend(model: nn.Module, backend: str) -> nn.Module:
    """Switch every attention layer of `model` to "sdpa" or "xformers" (CUDA tensors only)."""
    for module in model.modules():
        if isinstance(module, Attention):
            module.set_backend(backend)
    return model


def set_packed_attention(model: nn.Module, mode: str) -> nn.Module:
    """Packed crops attend "per_group" (one call per crop size) or "jagged" (one call for all)."""
    if mode not in PACKED_ATTENTION:
        raise ValueError(f"unknown packed attention {mode!r}; choose one of {PACKED_ATTENTION}")
    for module in model.modules():
        if isinstance(module, Attention):
            module.packed_attention = mode
    return model
