"""Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

from __future__ import annotations

import torch
from torch import nn

from .attention import Attention
from .drop_path import drop_path, subset_residual
from .layer_scale import LayerScale
from .mlp import Mlp
from .swiglu import SwiGLU, swiglu_hidden_dim

# Above this rate the subset form of stochastic depth saves more than its gather/scatter costs.
SUBSET_DROP_PATH_THRESHOLD = 0.1


class Block(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        ffn: str = "mlp",
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        init_values: float | None = None,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        if ffn == "mlp":
            self.mlp = Mlp(dim, int(dim * mlp_ratio), bias=ffn_bias)
        elif ffn == "swiglu":
            self.mlp = SwiGLU(dim, swiglu_hidden_dim(dim, mlp_ratio), bias=ffn_bias)
        else:
            raise ValueError(f"unknown ffn {ffn!r}; expected 'mlp' or 'swiglu'")
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path_rate = drop_path_rate
        # Above the threshold, compute dropped branches for the kept samples only (DINOv2's fast
        # path); False always uses per-sample masks (same expectation, full compute).
        self.subset_stochastic_depth = True

    def _attn_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.ls1(self.attn(self.norm1(x)))

    def _ffn_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.ls2(self.mlp(self.norm2(x)))

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        if isinstance(x, list):  # through __call__, so FSDP / hooks see packed calls too
            return self.forward_packed(x)
        p = self.drop_path_rate if self.training else 0.0
        if p > SUBSET_DROP_PATH_THRESHOLD and self.subset_stochastic_depth:
            x = subset_residual(x, self._attn_branch, p)
            return subset_residual(x, self._ffn_branch, p)
        x = x + drop_path(self._attn_branch(x), p, self.training)
        return x + drop_path(self._ffn_branch(x), p, self.training)

    # -- several crop sizes at once ---------------------------------------------------------
    def forward_packed(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The block over groups of sequences of different lengths (e.g. global and local crops).

        Norms, projections and the MLP run once over all tokens of all groups; attention runs per
        group. Stochastic depth keeps its per-sample semantics: above the subset threshold only the
        kept samples of each group are packed and computed.
        """
        xs = self._packed_residual(xs, self._attn_packed)
        return self._packed_residual(xs, self._ffn_packed)

    def _attn_packed(self, flat: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
        return self.ls1(self.attn.forward_packed(self.norm1(flat), shapes))

    def _ffn_packed(self, flat: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
        return self.ls2(self.mlp(self.norm2(flat)))

    def _packed_residual(self, xs: list[torch.Tensor], branch) -> list[torch.Tensor]:
        p = self.drop_path_rate if self.training else 0.0
        subsets = [None] * len(xs)
        if p > SUBSET_DROP_PATH_THRESHOLD and self.subset_stochastic_depth:
            subsets = [
                torch.randperm(x.shape[0], device=x.device)[: max(int(x.shape[0] * (1 - p)), 1)] for x in xs
            ]
        inputs = [x if idx is None else x[idx] for x, idx in zip(xs, subsets)]
        shapes = [(t.shape[0], t.shape[1]) for t in inputs]
        flat = torch.cat([t.reshape(-1, t.shape[-1]) for t in inputs])
        residuals = branch(flat, shapes).split([b * n for b, n in shapes])
        out = []
        for x, idx, r, (b, n) in zip(xs, subsets, residuals, shapes):
            r = r.reshape(b, n, -1)
            if idx is None:
                out.append(x + drop_path(r, p, self.training))
            else:
                scale = x.shape[0] / b
                out.append(
                    torch.index_add(x.flatten(1), 0, idx, r.flatten(1).to(x.dtype), alpha=scale).view_as(x)
                )
        return out
