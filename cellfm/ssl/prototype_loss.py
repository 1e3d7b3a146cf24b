"""Soft-target cross-entropy through the prototype layer, computed in row chunks.

The DINO and iBOT losses score the student's prototype logits x W^T (rows x 65536 by default)
against the teacher's probabilities. Written naively that makes several (rows, K) tensors (logits,
scaled logits, log-softmax, products, and as many again in backward), each hundreds of MB for iBOT's
masked tokens and each freshly allocated (page faults on CPU). Here the logits of a block of rows
are computed into one reused buffer, the loss and the gradients for that block are taken at once
(the loss is a plain sum, so its gradient is known in forward), and backward only scales the saved
gradients. Peak memory holds one block instead of the whole matrix; the result equals
`-(t * log_softmax(x W^T / temp)).sum(-1)` weighted per row, gradients included.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Rows per block: about 2**24 logits (64 MB in fp32) whatever the prototype count.
BLOCK_ELEMENTS = 1 << 24


@dataclass
class SoftTargets:
    """Consecutive rows of the head's input scored against soft targets.

    Row i of the segment is scored against `probs[index[i]]` (or `probs[i]` without `index`); its
    cross-entropy is multiplied by `row_weight[i]`, and the segment's weighted sum enters the
    differentiable total multiplied by `scale` (a loss weight). Rows of `probs` may sum to more than
    one: cross-entropy is linear in the targets, so the sum of several teachers' probabilities
    scores a crop against all of them at once.
    """

    probs: torch.Tensor  # (P, K) fp32, no gradient
    row_weight: torch.Tensor  # (rows,) fp32
    index: torch.Tensor | None = None  # (rows,) long into probs
    scale: float = 1.0
    temp: float = 0.1  # student temperature

    @property
    def rows(self) -> int:
        return len(self.row_weight)


class _PrototypeCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, segments, block_rows):
        with torch.autocast(x.device.type, enabled=False):  # dtypes are handled here
            grad_x, grad_w, values = _blocks(x, weight, segments, block_rows)
        ctx.save_for_backward(grad_x, grad_w)
        ctx.dtypes = (x.dtype, weight.dtype)
        ctx.mark_non_differentiable(values)
        # Scaled on the device (a torch.tensor of the scales would be a synchronising copy on CUDA).
        total = sum(values[i] * s.scale for i, s in enumerate(segments))
        return total, values

    @staticmethod
    def backward(ctx, grad_total, _grad_values):
        grad_x, grad_w = ctx.saved_tensors
        g = grad_total.to(grad_x.dtype)
        return (grad_x * g).to(ctx.dtypes[0]), (grad_w * g).to(ctx.dtypes[1]), None, None


def _blocks(x, weight, segments, block_rows):
    """fp32 gradients w.r.t. x and weight of sum_s scale_s L_s, and the values L_s."""
    k = weight.shape[0]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32  # fp32 for fp32/bf16/fp16
    grad_x = torch.zeros(x.shape, dtype=acc, device=x.device)
    grad_w = torch.zeros(weight.shape, dtype=acc, device=x.device)
    values = torch.zeros(len(segments), dtype=acc, device=x.device)
    rows = max(1, min(block_rows, max(s.rows for s in segments)))
    logits_buf = x.new_empty(rows, k)
    target_buf = torch.empty(rows, k, dtype=acc, device=x.device)
    wt = weight.t()
    start = 0
    for si, seg in enumerate(segments):
        probs = seg.probs.to(acc)
        for lo in range(0, seg.rows, rows):
            hi = min(lo + rows, seg.rows)
            n = hi - lo
            xb = x[start + lo : start + hi]
            z = torch.mm(xb, wt, out=logits_buf[:n])
            z = z.to(acc)
            z.mul_(1.0 / seg.temp)
            if seg.index is None:
                t = probs[lo:hi]
            else:
                t = torch.index_select(probs, 0, seg.index[lo:hi], out=target_buf[:n])
            w = seg.row_weight[lo:hi].to(acc)
            # CE_i = sum_k t_ik (lse_i - z_ik) = T_i * lse_i - <t_i, z_i>, T_i = sum_k t_ik
            z.sub_(z.amax(dim=1, keepdim=True))  # now lse_i = log(sum exp z_i)
            t_dot_z = torch.bmm(t.unsqueeze(1), z.unsqueeze(2)).view(n)  # no (n, K) temporary
            t_sum = t.sum(dim=1)
            z.exp_()
            total = z.sum(dim=1)
            ce = t_sum * total.log() - t_dot_z
            values[si] += (w * ce).sum()
            # d(sum_i s w_i CE_i)/dz_ik = s w_i (T_i softmax_ik - t_ik) / temp
            coef = w * (seg.scale / seg.temp)
            z.mul_((coef * t_sum / total)[:, None]).addcmul_(t, coef[:, None], value=-1.0)
            g = z.to(x.dtype)
            grad_x[start + lo : start + hi] = torch.mm(g, weight)
            if g.dtype == acc:
                grad_w.addmm_(g.t(), xb)
            else:
                grad_w.add_(torch.mm(g.t(), xb))
        start += seg.rows
    return grad_x, grad_w, values


def prototype_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    segments: list[SoftTargets],
    block_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(differentiable sum_s scale_s * L_s, detached per-segment L_s) for rows `x` (N, D) against
    prototypes `weight` (K, D), where L_s = sum_i row_weight_i * CE(targets_i, softmax(x_i W^T / temp))
    over the segment's rows (temp: the segment's student temperature); the segments cover the rows of
    `x` in order."""
    if sum(s.rows for s in segments) != x.shape[0]:
        raise ValueError(
            f"the target segments cover {sum(s.rows for s in segments)} rows but the head got {x.shape[0]}"
        )
    for s in segments:
        width = s.probs.shape[-1]
        if width != weight.shape[0]:
            raise ValueError(f"targets have {width} prototypes, the head has {weight.shape[0]}")
    if block_rows is None:
        block_rows = max(1, BLOCK_ELEMENTS // weight.shape[0])
    return _PrototypeCrossEntropy.apply(x, weight, segments, block_rows)
