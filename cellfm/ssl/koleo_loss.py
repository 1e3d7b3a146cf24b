"""KoLeo regulariser: spreads the batch's L2-normalised features by penalising -log of each sample's
distance to its nearest neighbour (Sablayrolles et al.). Always fp32; undefined for one sample."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KoLeoLoss(nn.Module):
    def forward(self, features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        if features.shape[0] < 2:
            # One sample has no neighbour: contribute nothing rather than NaN.
            return features.new_zeros((), dtype=torch.float32)
        with torch.autocast(device_type=features.device.type, enabled=False):
            x = F.normalize(features.float(), p=2, dim=-1, eps=eps)
            with torch.no_grad():
                dots = x @ x.t()
                dots.fill_diagonal_(-1.0)
                nearest = dots.argmax(dim=1)
            dist = F.pairwise_distance(x, x[nearest], p=2, eps=eps)
            return -torch.log(dist + eps).mean()
