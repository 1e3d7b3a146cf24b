"""iBOT loss: masked-patch prediction. Student patch logits at masked positions of its global crops
are matched to the teacher's (unmasked) patch targets at the same positions; each token is weighted by
1 / (masked tokens in its image), and the sum is divided by the number of images."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .teacher_targets import TeacherTargetLoss


def masks_weight(masks: torch.Tensor) -> torch.Tensor:
    """Per masked token, 1 / (number of masked tokens in its image); `masks` is (B, N) bool."""
    per_image = 1.0 / masks.sum(dim=-1).clamp(min=1).to(torch.float32)
    return per_image[:, None].expand_as(masks)[masks]


class iBOTPatchLoss(TeacherTargetLoss):  # noqa: N801 - the method's name
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
