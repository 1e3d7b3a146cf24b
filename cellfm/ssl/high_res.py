"""The high-resolution adaptation phase (`train.high_res`), as DINOv2 ends its pretraining: the last
`iters` iterations run at larger crops (e.g. 518 px global crops for patch 14), the schedules (lr,
weight decay, teacher momentum and temperature) continuing where they are. The backbone
interpolates its positional embedding to each crop's grid, so nothing in the model changes.

The phase's batch stream is built once, the first time a step inside the phase is asked for (at
the switch, or at once when a run resumes inside the phase), from the recipe with the crop sizes
replaced. Batches are seeded per step, so a run resumed inside the phase sees the batches an
uninterrupted one does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from .empty_data import check_field_sizes

if TYPE_CHECKING:
    from .config import SSLConfig


def phase_start(cfg: SSLConfig) -> int | None:
    """The first step at high resolution, or None when the phase is off."""
    n = cfg.train.high_res.iters
    return cfg.total_iters - n if n > 0 else None


def high_res_sizes(cfg: SSLConfig) -> tuple[int, int, int]:
    """(global, local, field) crop sizes of the phase; unset ones scale with the global crops."""
    h, c, p = cfg.train.high_res, cfg.augment.crops, cfg.model.patch_size
    ratio = h.global_crops_size / c.global_crops_size
    local = h.local_crops_size or max(p, round(c.local_crops_size * ratio / p) * p)
    field = h.field_crop_size or max(h.global_crops_size, round(cfg.data.field_crop_size * ratio))
    return h.global_crops_size, local, field


def high_res_config(cfg: SSLConfig) -> SSLConfig:
    """The recipe with the phase's crop sizes (the masks follow the global crops)."""
    g, local, field = high_res_sizes(cfg)
    out = copy.deepcopy(cfg)
    out.augment.crops.global_crops_size = g
    out.augment.crops.local_crops_size = local
    out.data.field_crop_size = field
    return out


def check_high_res(cfg: SSLConfig) -> None:
    """Errors naming the `train.high_res` key that cannot work with this recipe."""
    h = cfg.train.high_res
    if h.iters == 0:
        return
    if not 0 < h.iters <= cfg.total_iters:
        raise ValueError(
            f"train.high_res.iters = {h.iters} must be between 0 (off) and the schedule's "
            f"{cfg.total_iters} iterations (train.epochs x train.iters_per_epoch)"
        )
    g, local, field = high_res_sizes(cfg)
    p = cfg.model.patch_size
    for name, size in (("global_crops_size", g), ("local_crops_size", local)):
        if size < p or size % p:
            raise ValueError(
                f"train.high_res.{name} = {size} is not a positive multiple of model.patch_size = {p}"
            )
    if field < g:
        raise ValueError(f"train.high_res.field_crop_size = {field} is smaller than its global crops ({g})")


class CropPhases:
    """Which batch stream a step uses: the recipe's (`base`) before the phase, the high-resolution
    one (made by `make_stream` from `high_res_config`, once) from `start` on."""

    def __init__(self, cfg: SSLConfig, base: Any, make_stream: Callable[[SSLConfig], Any]):
        self.cfg, self.base, self.make_stream = cfg, base, make_stream
        self.start = phase_start(cfg)
        self.high: Any = None
        if self.start is not None:  # fail now, not after days of training, if no field is large enough
            check_field_sizes(base.crops.images, high_res_sizes(cfg)[2])

    def in_phase(self, step: int) -> bool:
        return self.start is not None and step >= self.start

    def stream_at(self, step: int) -> Any:
        if not self.in_phase(step):
            return self.base
        if self.high is None:
            with torch.random.fork_rng(devices=[]):  # building it leaves the training RNG alone
                self.high = self.make_stream(high_res_config(self.cfg))
        return self.high

    def global_crops_size(self, step: int) -> int:
        return (
            high_res_sizes(self.cfg)[0] if self.in_phase(step) else self.cfg.augment.crops.global_crops_size
        )
