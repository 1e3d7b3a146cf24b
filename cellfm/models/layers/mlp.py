"""Two-layer MLP feed-forward block (`fc1`, exact GELU, `fc2`).

In training the GELU output (the largest activation of a ViT block, 4D wide) is not kept for
backward: it is recomputed from the fc1 output, which autograd keeps anyway. Results are identical;
activation memory drops by a quarter for one extra GELU per block in backward. Under
`torch.compile` the autograd.Function would break the graph at every block, so there the same two
ops run in a non-reentrant checkpoint region instead: the compiled graph saves the fc1 output, not
the GELU output, and recomputes only the GELU (left alone, the min-cut partitioner saves both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class _GeluLinear(torch.autograd.Function):
    """fc2(gelu(h)) that saves h instead of gelu(h)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(h, weight)
        ctx.has_bias = bias is not None
        return F.linear(F.gelu(h), weight, bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        h, weight = ctx.saved_tensors
        with torch.enable_grad():
            h_ = h.detach().requires_grad_(True)
            a = F.gelu(h_)
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        grad_w = g2.t().mm(a.detach().reshape(-1, a.shape[-1])).to(weight.dtype)
        grad_b = g2.sum(0).to(weight.dtype) if ctx.has_bias else None
        grad_a = grad_out.matmul(weight.to(grad_out.dtype))
        (grad_h,) = torch.autograd.grad(a, h_, grad_a)
        return grad_h, grad_w, grad_b


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)
        self.recompute_activation = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if (
            self.recompute_activation
            and torch.is_grad_enabled()
            and h.requires_grad
            and not torch.is_autocast_enabled()
        ):
            if torch.compiler.is_compiling():
                return checkpoint(self._gelu_fc2, h, use_reentrant=False)
            return _GeluLinear.apply(h, self.fc2.weight, self.fc2.bias)
        return self._gelu_fc2(h)

    def _gelu_fc2(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(h))
