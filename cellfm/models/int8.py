"""Int8 inference on the CPU: the transformer's linear layers with int8 weights and activations.

Weights are quantised once, symmetrically per output channel; activations per token (row) at
every call, so one bright token does not cost the others their precision. The products run in
`torch._int_mm` (int8 x int8 -> int32; VNNI / AMX kernels through oneDNN), about five times the
fp32 matmul rate on an AVX-512 VNNI CPU, and are rescaled to float32. Patch embedding, norms,
attention scores and everything outside the blocks stay float32. For inference only: the result
is close to, not equal to, the float32 model (`benchmarks/embed.py` reports the CLS cosine).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def _quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: (int8 values, float32 scale per row)."""
    # amax and amin separately: faster on CPU than abs().amax(), aminmax() or an inf-norm
    high, low = x.amax(dim=1, keepdim=True), x.amin(dim=1, keepdim=True)
    scale = torch.maximum(high, low.neg_()).clamp_min_(1e-12).div_(127.0)
    # |x / scale| <= 127 by construction, so rounding needs no clamp
    return x.div(scale).round_().to(torch.int8), scale


class Int8Linear(nn.Module):
    """y = x W^T + b with W and x rounded to int8 (per output channel / per row scales)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight_q, scale = _quantize_rows(linear.weight.detach().float())
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_t", weight_q.t().contiguous())  # (in, out) for _int_mm
        self.register_buffer("weight_scale", scale.reshape(1, -1))
        bias = linear.bias.detach().float().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise RuntimeError("Int8Linear runs on the CPU; use mixed precision (amp) on GPUs")
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).float()
        xq, x_scale = _quantize_rows(rows)
        y = torch._int_mm(xq, self.weight_t) * x_scale  # int32 * float32 -> float32 in one pass
        y = (
            torch.addcmul(self.bias, y, self.weight_scale)
            if self.bias is not None
            else y.mul_(self.weight_scale)
        )
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` (for inference) whose transformer blocks use `Int8Linear`."""
    model = copy.deepcopy(model).eval()
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        inner = getattr(model, "backbone", None)  # Bag-of-Channels wraps a 1-channel ViT
        blocks = getattr(inner, "blocks", None)
    if blocks is None:
        raise ValueError(f"{type(model).__name__}: no transformer blocks to quantise")
    for block in blocks.modules():
        for name, child in list(block.named_children()):
            if type(child) is nn.Linear:
                setattr(block, name, Int8Linear(child))
    return model
