"""Pretraining that can never get a crop ends with an error instead of endless empty epochs."""

from __future__ import annotations

from typing import Any

MAX_EMPTY_EPOCHS = 3  # consecutive epochs without one batch before giving up


class NoUsableCrops(ValueError):
    """No field of the stores yields a crop under the data settings."""


def _stores(images: list[Any]) -> list[str]:
    return sorted({im.uri for im in images})


def _sizes(images: list[Any]) -> list[tuple[int, int]]:
    out = []
    for im in images:
        try:
            out.append(tuple(im.shape[1:]))
        except (OSError, KeyError, ValueError, IndexError):  # broken fields are counted when read
            continue
    return out


def check_field_sizes(images: list[Any], crop: int) -> None:
    """Fail at once when `data.field_crop_size` exceeds every readable field."""
    sizes = _sizes(images)
    if sizes and all(min(s) < crop for s in sizes):
        largest = max(sizes, key=lambda s: s[0] * s[1])
        raise NoUsableCrops(
            f"data.field_crop_size={crop} is larger than every field of {_stores(images)} "
            f"({len(sizes)} fields, largest {largest[0]}x{largest[1]} px at data.level {images[0].level}); "
            "lower data.field_crop_size or use a finer data.level"
        )


def no_usable_crops(crops: Any, epochs: int) -> NoUsableCrops:
    """The error after `epochs` empty epochs, naming the stores and the settings that select crops."""
    sizes = _sizes(crops.images)
    lo, hi = (min(sizes), max(sizes)) if sizes else ((0, 0), (0, 0))
    span = f"{lo[0]}x{lo[1]}..{hi[0]}x{hi[1]} px" if sizes else "none readable"
    counts = {k: v for k, v in crops.counters.items() if v}
    return NoUsableCrops(
        f"{epochs} epochs in a row gave no batch from {_stores(crops.images)} ({len(crops.images)} fields, "
        f"sizes {span}): with data.field_crop_size={crops.crop}, data.foreground={crops.foreground}, "
        f"data.threshold={crops.threshold!r}, data.min_foreground={crops.min_foreground} no crop is usable "
        f"(all background, too small or unreadable{f'; counts {counts}' if counts else ''}). Lower "
        "data.min_foreground or data.field_crop_size, set data.threshold, or data.foreground=false"
    )
