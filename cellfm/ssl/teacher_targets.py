"""Teacher-side targets shared by the DINO and iBOT losses: EMA centering and Sinkhorn-Knopp.

Both reduce over the global batch when torch.distributed is initialised, so every rank sees the
same targets as one process with the whole batch.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if _world() > 1:
        dist.all_reduce(t)
    return t


def _global_logsumexp(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """log(sum(exp(x))) over all of `x` (dim None) or along `dim`, summed across ranks."""
    peak = x.max() if dim is None else x.max(dim=dim, keepdim=True).values
    peak = peak.detach().clone()
    if _world() > 1:
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    total = (x - peak).exp().sum() if dim is None else (x - peak).exp().sum(dim=dim, keepdim=True)
    return peak + _all_reduce(total).log()


@torch.no_grad()
def sinkhorn_knopp(
    logits: torch.Tensor, temp: float, n_iterations: int = 3, n_samples: torch.Tensor | int | None = None
) -> torch.Tensor:
    """Balanced soft assignments (rows sum to 1) of `logits` (B, K), computed in fp32.

    The same iterations as DINOv2 (normalise the total, then prototypes, then samples), done in the
    log domain so that exp() never overflows or underflows (the official code returns NaN once
    logits / temp exceeds ~88). `n_samples` is this rank's number of valid rows (iBOT's variable
    masked-token count); it is summed over ranks to get the global batch size.
    """
    log_q = logits.float().t() / temp  # (K, B)
    log_total = _log_global_count(log_q.shape[1] if n_samples is None else n_samples, log_q.device)
    k = log_q.shape[0]
    log_q = log_q - _global_logsumexp(log_q)
    for _ in range(n_iterations):
        log_q = log_q - _global_logsumexp(log_q, dim=1) - math.log(k)
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - log_total
    return (log_q + log_total).exp().t()


def _log_global_count(n: torch.Tensor | int, device: torch.device) -> torch.Tensor | float:
    """log(sum of `n` over ranks), without a host sync: a float on one process, else a device
    scalar (the all-reduced count stays on the device; `.item()` would stall the step)."""
    if _world() == 1 and not torch.is_tensor(n):
        return math.log(n)
    count = (
        n.to(device, torch.float32).clone() if torch.is_tensor(n) else torch.full((), float(n), device=device)
    )
    return _all_reduce(count).log()


class Centering(nn.Module):
    """EMA of the batch-mean teacher logits, subtracted before the sharpened softmax.

    As in DINOv2 the update computed at step t is applied at the start of step t + 1 (one-step
    lag), so the reduction of step t can overlap the rest of that step.
    """

    def __init__(self, dim: int, momentum: float = 0.9):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, dim))
        self._pending: tuple[torch.Tensor, int, object] | None = None

    @torch.no_grad()
    def softmax(self, logits: torch.Tensor, temp: float, inplace: bool = False) -> torch.Tensor:
        """softmax((logits - centre) / temp); `inplace` overwrites `logits` block by block, which
        saves allocating (and on CPU page-faulting) a second (rows, K) tensor."""
        self.apply_update()
        if not inplace:
            return F.softmax((logits - self.center) / temp, dim=-1)
        logits.sub_(self.center).mul_(1.0 / temp)
        for block in logits.split(max(1, (1 << 22) // max(logits.shape[-1], 1))):
            block.copy_(F.softmax(block, dim=-1))
        return logits

    @torch.no_grad()
    def update(self, batch_sum: torch.Tensor, count: int) -> None:
        """Queue the sum of teacher logits over `count` rows; sums and counts are reduced over ranks,
        so the centre tracks the global mean even when ranks hold different numbers of rows (iBOT)."""
        # torch.full, not new_tensor: a host-to-device copy of pageable memory synchronises on CUDA.
        rows = torch.full((1,), float(count), dtype=torch.float32, device=batch_sum.device)
        packed = torch.cat([batch_sum.detach().float().reshape(-1), rows])
        handle = dist.all_reduce(packed, async_op=True) if _world() > 1 else None
        self._pending = (packed, handle)

    @torch.no_grad()
    def apply_update(self) -> None:
        if self._pending is None:
            return
        packed, handle = self._pending
        if handle is not None:
            handle.wait()
        mean = (packed[:-1] / packed[-1].clamp_min(1)).reshape(self.center.shape)
        self.center.mul_(self.momentum).add_(mean.to(self.center.dtype), alpha=1 - self.momentum)
        self._pending = None


class TeacherTargetLoss(nn.Module):
    """Base of the DINO and iBOT losses: a student temperature and the teacher-side targets."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.student_temp = student_temp
        self.centering = Centering(out_dim, center_momentum)

    @property
    def center(self) -> torch.Tensor:
        return self.centering.center

    @torch.no_grad()
    def teacher_probs(
        self, teacher_logits: torch.Tensor, temp: float, method: str = "centering", inplace: bool = False
    ) -> torch.Tensor:
        """Targets (rows, K): centred softmax (queueing the centre update: the global mean over rows;
        DINOv2's iBOT averages per-rank means instead) or Sinkhorn-Knopp over the global batch.
        `inplace` lets the centred softmax overwrite `teacher_logits` (fp32)."""
        if method == "centering":
            batch_sum = teacher_logits.float().sum(dim=0, keepdim=True)
            inplace = inplace and teacher_logits.dtype == torch.float32
            probs = self.centering.softmax(teacher_logits, temp, inplace=inplace)
            self.centering.update(batch_sum, len(teacher_logits))
            return probs
        if method == "sinkhorn_knopp":
            return sinkhorn_knopp(teacher_logits, temp, n_samples=len(teacher_logits))
        raise ValueError(f"unknown teacher target method {method!r}; use 'centering' or 'sinkhorn_knopp'")
