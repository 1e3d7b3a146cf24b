"""iBOT block masks over a patch grid, following the DINOv2 rules, drawn from a torch.Generator.

Rules: each block covers a target area uniform in [min_num_patches, budget] patches with aspect
ratio (h / w) log-uniform in [min_aspect, 1 / min_aspect]; up to `attempts` placements per block;
a block must add at least one new patch and at most the remaining budget; blocks are added until
the requested count is reached or a block fails. With ``strict=True`` (default) blocks whose
rounded size breaks the rules (fewer than `min_num_patches` patches, e.g. 1 x 3, or an aspect such
as 1 x 4 outside the range) are rejected, so every block obeys them exactly; masks then fall short
of the requested count by about one patch on average. ``strict=False`` accepts such blocks, as
the official code does, and matches its statistics.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._utils import rand

Block = tuple[int, int, int, int]  # top, left, height, width


class MaskingGenerator:
    """Random block masks on an (H, W) patch grid; `max_num_patches` caps one block's area."""

    def __init__(
        self,
        input_size: int | tuple[int, int],
        max_num_patches: float | None = None,
        min_num_patches: int = 4,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        attempts: int = 10,
        strict: bool = True,
    ):
        h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        if h < 1 or w < 1:
            raise ValueError(f"mask grid must be at least 1x1, got {(h, w)}")
        if not 0 < min_aspect <= (max_aspect or 1 / min_aspect):
            raise ValueError(f"need 0 < min_aspect <= max_aspect, got {min_aspect}, {max_aspect}")
        if min_num_patches < 1 or attempts < 1:
            raise ValueError(f"min_num_patches and attempts must be >= 1, got {min_num_patches}, {attempts}")
        self.height, self.width = int(h), int(w)
        self.num_patches = self.height * self.width
        self.max_num_patches = 0.5 * self.num_patches if max_num_patches is None else float(max_num_patches)
        self.min_num_patches = int(min_num_patches)
        self.min_aspect = float(min_aspect)
        self.max_aspect = float(max_aspect or 1.0 / min_aspect)
        self.attempts = int(attempts)
        self.strict = bool(strict)

    def __repr__(self) -> str:
        return (
            f"MaskingGenerator({self.height}x{self.width}, block area [{self.min_num_patches}, "
            f"{self.max_num_patches:g}], aspect [{self.min_aspect:.3f}, {self.max_aspect:.3f}])"
        )

    def _block(self, mask: np.ndarray, budget: float, u: list[list[float]]) -> tuple[int, Block | None]:
        """Try to place one block; returns (patches added, block)."""
        log_lo, log_hi = math.log(self.min_aspect), math.log(self.max_aspect)
        for u_area, u_aspect, u_top, u_left in u:
            area = self.min_num_patches + (budget - self.min_num_patches) * u_area
            aspect = math.exp(log_lo + (log_hi - log_lo) * u_aspect)
            bh = int(round(math.sqrt(area * aspect)))
            bw = int(round(math.sqrt(area / aspect)))
            if not (0 < bh < self.height and 0 < bw < self.width):
                continue
            if self.strict and (
                bh * bw < self.min_num_patches or not self.min_aspect <= bh / bw <= self.max_aspect
            ):
                continue
            top = min(int(u_top * (self.height - bh + 1)), self.height - bh)
            left = min(int(u_left * (self.width - bw + 1)), self.width - bw)
            region = mask[top : top + bh, left : left + bw]
            new = bh * bw - int(region.sum())
            if 0 < new <= budget:
                region[...] = True
                return new, (top, left, bh, bw)
        return 0, None

    def blocks(
        self, num_masking_patches: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, list[Block]]:
        """A mask with at most `num_masking_patches` patches, and the blocks that make it."""
        mask = np.zeros((self.height, self.width), dtype=bool)
        placed: list[Block] = []
        count = 0
        while count < num_masking_patches:
            budget = min(num_masking_patches - count, self.max_num_patches)
            u = rand((self.attempts, 4), generator, torch.device("cpu")).tolist()
            added, block = self._block(mask, budget, u)
            if not added:
                break
            count += added
            placed.append(block)
        return torch.from_numpy(mask), placed

    def __call__(
        self, num_masking_patches: int = 0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(H, W) bool mask with at most `num_masking_patches` masked patches."""
        return self.blocks(num_masking_patches, generator)[0]
