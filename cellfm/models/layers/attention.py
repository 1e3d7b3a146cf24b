"""Multi-head self-attention with one fused `qkv` projection (rows ordered q | k | v).

The kernel is chosen per module by `backend`:
- "sdpa" (default): `torch.nn.functional.scaled_dot_product_attention`, which picks flash /
  memory-efficient / math kernels on any device.
- "xformers": `xformers.ops.memory_efficient_attention`, used only for CUDA tensors when xformers
  is installed; CPU tensors always take SDPA because xformers has no CPU kernels.
Switch a whole model with `cellfm.models.set_attention_backend(model, name)`.

Packed crops (`forward_packed`) attend per group of equal-length sequences by default
("per_group": one SDPA call per crop size). `packed_attention = "jagged"` makes it one SDPA call over
all sequences of all groups as a jagged nested tensor (varlen flash / memory-efficient kernels on
CUDA; a slower fallback on CPU, where per_group stays the default).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

BACKENDS = ("sdpa", "xformers")
PACKED_ATTENTION = ("per_group", "jagged")


def load_xformers_ops() -> ModuleType | None:
    """The `xformers.ops` module, or None when xformers is not installed or fails to import."""
    try:
        return importlib.import_module("xformers.ops")
    except Exception:  # noqa: BLE001 - a broken xformers build must not break cellfm
        return None


def xformers_attention(ops: ModuleType, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention through xformers; q, k, v are (B, heads, N, head_dim) as for SDPA.

    xformers expects (B, N, heads, head_dim) and returns the same layout.
    """
    out = ops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.backend = "sdpa"
        self._xformers_ops: ModuleType | None = None
        self.packed_attention = "per_group"

    def set_backend(self, backend: str, ops: ModuleType | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
        if backend == "xformers":
            ops = ops or load_xformers_ops()
            if ops is None:
                raise RuntimeError(
                    "attention backend 'xformers' was asked for but xformers is not installed "
                    "(pip install 'cellfm[xformers]'); the default 'sdpa' backend needs nothing extra"
                )
        self.backend = backend
        self._xformers_ops = ops

    def _attend(self, qkv: torch.Tensor, b: int, n: int) -> torch.Tensor:
        """(B*N, 3D) projections of one group of sequences -> (B*N, D) attention outputs."""
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.backend == "xformers" and qkv.is_cuda:
            out = xformers_attention(self._xformers_ops, q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).reshape(b * n, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return self.proj(self._attend(self.qkv(x), b, n)).reshape(b, n, d)

    def forward_packed(self, flat: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
        """Attention over several groups of sequences packed as one (sum B_i*N_i, D) tensor.

        The qkv and output projections run once over all tokens (one large matmul each); attention
        runs once per group of equal-length sequences, never across groups.
        """
        qkv = self.qkv(flat)
        if self.packed_attention == "jagged":
            return self.proj(self._attend_jagged(qkv, shapes))
        qkv = qkv.split([b * n for b, n in shapes])
        return self.proj(torch.cat([self._attend(q, b, n) for q, (b, n) in zip(qkv, shapes)]))

    def _attend_jagged(self, qkv: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
        """(T, 3D) projections of all groups -> (T, D): one SDPA call over every sequence."""
        t = qkv.shape[0]
        # sequence start offsets from device aranges (a tensor of Python ints would be a host copy)
        starts, base = [], 0
        for b, n in shapes:
            starts.append(torch.arange(b, device=qkv.device) * n + base)
            base += b * n
        offsets = torch.cat(starts + [torch.full((1,), base, device=qkv.device, dtype=torch.long)])
        lengths = [n for _, n in shapes]
        q, k, v = qkv.view(t, 3, self.num_heads, self.head_dim).permute(1, 0, 2, 3).contiguous().unbind(0)

        def jagged(values: torch.Tensor) -> torch.Tensor:
            nt = torch.nested.nested_tensor_from_jagged(
                values, offsets, min_seqlen=min(lengths), max_seqlen=max(lengths)
            )
            return nt.transpose(1, 2)  # (sequences, heads, jagged tokens, head_dim)

        out = F.scaled_dot_product_attention(jagged(q), jagged(k), jagged(v))
        return out.transpose(1, 2).values().reshape(t, -1)
