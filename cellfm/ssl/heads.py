"""Projection heads: the DINO head (also used for iBOT) with a weight-normalised prototype layer.

Parameter names follow the official code (`mlp.0/2/4`, `last_layer.weight_g/weight_v`) so training
exports from either side can be read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.init import trunc_normal_

from .prototype_loss import SoftTargets, prototype_cross_entropy


class WeightNormLinear(nn.Module):
    """Bias-free Linear with weight = g * v / ||v|| per output row; g starts at 1 (trainable)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))
        trunc_normal_(self.weight_v, std=0.02)

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype))


class DINOHead(nn.Module):
    """Linear(D, hidden) - GELU - Linear(hidden, hidden) - GELU - Linear(hidden, bottleneck), L2
    normalisation, then `num_prototypes` weight-normalised prototypes."""

    def __init__(
        self,
        in_dim: int,
        num_prototypes: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
    ):
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"DINOHead needs nlayers >= 1, got {nlayers}")
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        for i in range(nlayers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < nlayers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, num_prototypes)

    def forward(
        self, x: torch.Tensor, targets: list[SoftTargets] | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Prototype logits (rows, K); or, given `targets` covering the rows, the soft-target
        cross-entropy computed blockwise without the (rows, K) logits (`prototype_cross_entropy`).
        The loss is taken inside forward so DDP / FSDP hooks see it like any other output."""
        x = self.mlp(x)
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        x = F.normalize(x, dim=-1, p=2, eps=eps)
        if targets is None:
            return self.last_layer(x)
        return prototype_cross_entropy(x, self.last_layer.weight.to(x.dtype), targets)
