"""iBOT loss: masked-patch prediction. Student patch logits at masked positions of its global crops
are matched to the teacher's (unmasked) patch targets at the same positions; each token is weighted by
1 / (masked tokens in its image), and the sum is divided by the number of images."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .teacher_targets import Centering, sinkhorn_knopp


def masks_weight(masks: torch.Tensor) -> torch.Tensor:
    """Per masked token, 1 / (number of masked tokens in its image); `masks` is (B, N) bool."""
    per_image = 1.0 / masks.sum(dim=-1).clamp(min=1).to(torch.float32)
    return per_image[:, None].expand_as(masks)[masks]


class iBOTPatchLoss(nn.Module):  # noqa: N801 - the method's name
    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.student_temp = student_temp
        self.centering = Centering(out_dim, center_momentum)

    @property
    def center(self) -> torch.Tensor:
        return self.centering.center

    @torch.no_grad()
    def teacher_probs(
        self, teacher_logits: torch.Tensor, temp: float, method: str = "centering"
    ) -> torch.Tensor:
        """Targets for the masked tokens (M, K); the centre tracks the mean over masked tokens."""
        if method == "centering":
            probs = self.centering.softmax(teacher_logits, temp)
            # Global mean over masked tokens (DINOv2 averages per-rank means instead).
            self.centering.update(teacher_logits.float().sum(dim=0, keepdim=True), len(teacher_logits))
            return probs
        if method == "sinkhorn_knopp":
            return sinkhorn_knopp(teacher_logits, temp, n_samples=len(teacher_logits))
        raise ValueError(f"unknown teacher target method {method!r}; use 'centering' or 'sinkhorn_knopp'")

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_probs: torch.Tensor,
        masks: torch.Tensor,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`student_logits`, `teacher_probs`: (M, K) for the M masked tokens of `masks` (B, N)."""
        if weight is None:
            weight = masks_weight(masks)
        ce = (teacher_probs * F.log_softmax(student_logits.float() / self.student_temp, dim=-1)).sum(dim=-1)
        return -(ce * weight).sum() / masks.shape[0]
