"""Training schedules as precomputed arrays, indexed by iteration (values past the end stay final)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def cosine_schedule(
    base: float,
    final: float,
    total_iters: int,
    warmup_iters: int = 0,
    start_warmup: float = 0.0,
    freeze_iters: int = 0,
) -> np.ndarray:
    """`freeze_iters` zeros, linear warmup from `start_warmup` to `base`, then cosine to `final`."""
    if total_iters < freeze_iters + warmup_iters:
        raise ValueError(
            f"schedule of {total_iters} iterations is shorter than freeze ({freeze_iters}) + warmup ({warmup_iters})"
        )
    freeze = np.zeros(freeze_iters)
    warmup = np.linspace(start_warmup, base, warmup_iters)
    n = total_iters - freeze_iters - warmup_iters
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * np.arange(n) / max(n, 1)))
    return np.concatenate((freeze, warmup, cosine))


def linear_then_constant(start: float, end: float, warmup_iters: int, total_iters: int) -> np.ndarray:
    """Linear from `start` to `end` over `warmup_iters`, then `end` (the teacher temperature)."""
    warm = np.linspace(start, end, min(warmup_iters, total_iters))
    return np.concatenate((warm, np.full(max(total_iters - warmup_iters, 0), end)))


def scaled_lr(base_lr: float, global_batch: int, rule: str = "sqrt_wrt_1024") -> float:
    """The learning rate for a global batch size: base * sqrt(batch / 1024) (DINOv2), or linear."""
    if rule == "sqrt_wrt_1024":
        return base_lr * math.sqrt(global_batch / 1024.0)
    if rule == "linear_wrt_256":
        return base_lr * global_batch / 256.0
    if rule == "none":
        return base_lr
    raise ValueError(f"unknown lr scaling rule {rule!r}; use sqrt_wrt_1024, linear_wrt_256 or none")


@dataclass
class Schedules:
    lr: np.ndarray
    wd: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray
    last_layer_lr: np.ndarray

    def at(self, step: int) -> dict[str, float]:
        def pick(a: np.ndarray) -> float:
            return float(a[min(step, len(a) - 1)])

        return {
            "lr": pick(self.lr),
            "wd": pick(self.wd),
            "momentum": pick(self.momentum),
            "teacher_temp": pick(self.teacher_temp),
            "last_layer_lr": pick(self.last_layer_lr),
        }
