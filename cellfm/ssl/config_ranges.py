"""Range checks of the training recipe: a value outside its meaningful range is an error naming the key."""

from __future__ import annotations

import math
from typing import Any

# dotted key -> (low, high, low inclusive, high inclusive); None = unbounded
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "optim.base_lr": (0, None, False, True),
    "optim.min_lr": (0, None, True, True),
    "optim.weight_decay": (0, None, True, True),
    "optim.weight_decay_end": (0, None, True, True),
    "optim.clip_grad": (0, None, True, True),
    "optim.layerwise_decay": (0, 1, False, True),
    "optim.patch_embed_lr_mult": (0, None, True, True),
    "optim.adamw_beta1": (0, 1, True, False),
    "optim.adamw_beta2": (0, 1, True, False),
    "optim.warmup_epochs": (0, None, True, True),
    "optim.freeze_last_layer_epochs": (0, None, True, True),
    "teacher.momentum_teacher": (0, 1, True, True),
    "teacher.final_momentum_teacher": (0, 1, True, True),
    "teacher.warmup_teacher_temp": (0, None, False, True),
    "teacher.teacher_temp": (0, None, False, True),
    "teacher.warmup_teacher_temp_epochs": (0, None, True, True),
    "train.batch_size_per_device": (1, None, True, True),
    "train.epochs": (1, None, True, True),
    "train.iters_per_epoch": (1, None, True, True),
    "train.checkpoint_every": (0, None, True, True),
    "train.export_every": (0, None, True, True),
    "data.field_crop_size": (1, None, True, True),
    "data.crops_per_epoch": (1, None, True, True),
    "data.crops_per_field": (1, None, True, True),
    "data.min_foreground": (0, 1, True, True),
    "data.num_workers": (0, None, True, True),
    "dino.loss_weight": (0, None, True, True),
    "dino.koleo_loss_weight": (0, None, True, True),
    "dino.cls_invariance_weight": (0, None, True, True),
    "ibot.loss_weight": (0, None, True, True),
    "augment.crops.global_crops_size": (1, None, True, True),
    "augment.crops.local_crops_size": (1, None, True, True),
    "augment.crops.local_crops_number": (0, None, True, True),
}
for _head in ("dino.head", "ibot.head"):
    for _k in ("n_prototypes", "bottleneck_dim", "hidden_dim", "nlayers"):
        RANGES[f"{_head}.{_k}"] = (1, None, True, True)


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _describe(lo: float | None, hi: float | None, lo_in: bool, hi_in: bool) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>=' if lo_in else '>'} {lo}")
    if hi is not None:
        parts.append(f"{'<=' if hi_in else '<'} {hi}")
    return " and ".join(parts)


def check_ranges(cfg: Any) -> None:
    """Raise ValueError naming the first key whose value is out of range (or not finite)."""
    from ..data.checked_read import check_policy

    for key, (lo, hi, lo_in, hi_in) in RANGES.items():
        value = _get(cfg, key)
        if key == "data.num_workers" and value == "auto":
            continue  # decided later from the cores available (cellfm.data.workers)
        bad = isinstance(value, float) and not math.isfinite(value)
        bad = bad or (lo is not None and (value < lo if lo_in else value <= lo))
        bad = bad or (hi is not None and (value > hi if hi_in else value >= hi))
        if bad:
            raise ValueError(f"{key} = {value!r} is out of range: expected {_describe(lo, hi, lo_in, hi_in)}")
    threshold = cfg.data.threshold
    if threshold != "otsu" and not (isinstance(threshold, int | float) and 0 <= threshold <= 1):
        raise ValueError(f"data.threshold = {threshold!r}: expected 'otsu' or a fraction in [0, 1]")
    try:
        check_policy(cfg.data.on_bad_data, cfg.data.nan_policy)
    except ValueError as err:
        raise ValueError(f"data.{err}") from err
