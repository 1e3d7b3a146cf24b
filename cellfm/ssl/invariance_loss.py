"""Dihedral invariance of the CLS token: the student's CLS of one view of a crop is pulled (cosine) to
the teacher's CLS averaged over the crop's 8 rot90 / flip views, a target that is invariant by
construction. Microscopy has no up or left, so a nucleus rotated by 90 degrees should embed where it
did; matching prototype assignments across views (DINO's loss, same-box global pairs) does not make
the CLS itself invariant (docs/model_card.md). Weighted by `dino.cls_invariance_weight` (0 = off)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..transforms import dihedral_views


@torch.no_grad()
def dihedral_mean_cls(
    teacher_backbone: nn.Module, crops: torch.Tensor, identity_cls: torch.Tensor
) -> torch.Tensor:
    """Unit-norm mean of the teacher's unit-norm CLS over the 8 symmetries of `crops` (B, C, H, W);
    `identity_cls` is the teacher's CLS of `crops` itself (already computed for DINO's targets), so one
    extra forward of the 7 other views runs, batched."""
    others = torch.cat(dihedral_views(crops)[1:])
    cls = teacher_backbone(others, is_training=True)["x_norm_clstoken"].float()
    views = torch.cat([identity_cls.float(), cls]).unflatten(0, (8, len(crops)))
    return F.normalize(F.normalize(views, dim=-1).mean(0), dim=-1)


class DihedralInvarianceLoss(nn.Module):
    def forward(self, student_cls: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean cosine distance (0 = aligned, 2 = opposite) of the student's CLS to the fixed target."""
        if student_cls.shape != target.shape:
            raise ValueError(
                f"student CLS {tuple(student_cls.shape)} and target {tuple(target.shape)} differ"
            )
        with torch.autocast(device_type=student_cls.device.type, enabled=False):
            return (1 - F.cosine_similarity(student_cls.float(), target.float(), dim=-1)).mean()
