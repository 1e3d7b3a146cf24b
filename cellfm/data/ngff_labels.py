"""Write NGFF label images (`<image>/labels/<name>`) with the `image-label` block that readers look for.

A label image has the same pyramid levels and scales as the image it annotates (nearest-neighbour
downsampling, so object ids survive), one channel, no `omero` block, and `image-label` with a colour
and the pixel area for every label value (`colors` / `properties` keyed by `label-value`, values
unique) and `source.image` pointing back at the image (`../../`).
"""

from __future__ import annotations

import colorsys
from typing import Any

import numpy as np
import zarr

from . import ngff
from .writer import create_level, multiscales_entry, with_version

MAX_LISTED = 65536  # above this many objects, colours/properties are not listed (metadata would be huge)


def label_color(value: int) -> list[int]:
    """A distinct, fixed RGBA colour for a label value (golden-ratio hues)."""
    r, g, b = colorsys.hsv_to_rgb((value * 0.618033988749895) % 1.0, 0.75, 1.0)
    return [int(r * 255), int(g * 255), int(b * 255), 255]


def image_label_block(labels: np.ndarray, version: str) -> dict[str, Any]:
    """The `image-label` block for an integer label array: colours and areas per non-zero value."""
    values, counts = np.unique(labels, return_counts=True)
    keep = values != 0
    values, counts = values[keep], counts[keep]
    block: dict[str, Any] = {"source": {"image": "../../"}}
    if version == "0.4":
        block["version"] = "0.4"
    if len(values) <= MAX_LISTED:
        block["colors"] = [{"label-value": int(v), "rgba": label_color(int(v))} for v in values]
        block["properties"] = [
            {"label-value": int(v), "area (pixels)": int(n)} for v, n in zip(values, counts)
        ]
    return block


def write_labels(field: zarr.Group, labels: np.ndarray, name: str, version: str, *, chunk: int = 256) -> str:
    """Write (H, W) integer `labels` as `field/labels/<name>` with the field image's levels and scales."""
    labels = np.asarray(labels)
    where = f"{field.path}/labels/{name}"
    if labels.ndim != 2 or labels.dtype.kind not in "ui":
        raise ValueError(f"{where}: labels must be a 2-D integer array, got {labels.dtype} {labels.shape}")
    image = ngff.parse_multiscales(dict(field.attrs), field.path)
    full = field[image.paths[0]].shape
    if labels.shape != tuple(full[-2:]):
        raise ValueError(
            f"{where}: labels are {labels.shape[0]}x{labels.shape[1]}, the image is {full[-2]}x{full[-1]}"
        )
    dtype = np.uint32 if labels.dtype.itemsize <= 4 and labels.min() >= 0 else labels.dtype
    group = field.require_group("labels")
    names = [n for n in ngff.labels_list(dict(group.attrs)) if n != name] + [name]
    target = group.require_group(name)
    for i, path in enumerate(image.paths):
        lh, lw = field[path].shape[-2:]
        step = 2**i
        level = labels[::step, ::step][:lh, :lw].astype(dtype)
        arr = create_level(target, str(i), (1, 1, 1, lh, lw), chunk, dtype, version)
        arr[...] = level[None, None, None]
    scales = [list(s) for s in image.scales]
    attrs = {"multiscales": [multiscales_entry([str(i) for i in range(len(image.paths))], scales, name)],
             "image-label": image_label_block(labels, version)}  # fmt: skip
    target.attrs.update(with_version(version, attrs))
    group.attrs.update(with_version(version, {"labels": names}))
    return where
