"""Summarise what a store holds: kind, wells, fields, levels, shapes, dtype, chunks, channels, labels."""

from __future__ import annotations

from typing import Any

from cellfm.data import ngff
from cellfm.data.plates import list_fields, store_kind
from cellfm.data.stores import Image, open_node


def describe_image(image: Image) -> dict[str, Any]:
    """Levels (path, shape, chunks), dtype, axes, channel names and label images of one field."""
    levels = []
    for i, path in enumerate(image.levels):
        arr = image.array(i)
        levels.append({"path": path, "shape": list(arr.shape), "chunks": list(arr.chunks)})
    labels: list[str] = []
    if image.kind == "ome":
        try:
            group = open_node(image.uri, f"{image.path}/labels" if image.path else "labels")
            labels = ngff.labels_list(dict(group.attrs)) or sorted(group.group_keys())
        except FileNotFoundError:
            labels = []
    return {"source": image.source, "axes": "".join(image.axes), "dtype": str(image.dtype), "levels": levels,
            "channels": image.stored_channel_names, "labels": labels}  # fmt: skip


def describe(uri: str, storage_options: dict | None = None) -> dict[str, Any]:
    """Describe a store; the first field stands for the others, which are only counted and checked."""
    kind = store_kind(uri, storage_options)
    images = list_fields(uri, strict=False, storage_options=storage_options)
    out: dict[str, Any] = {"uri": uri, "kind": kind}
    if kind in ("image", "array", "tiff"):
        if kind == "image":
            out["ngff_version"] = ngff.ome_attrs(dict(open_node(uri, "", storage_options).attrs))[0]
        return out | describe_image(images[0])
    attrs = dict(open_node(uri, "", storage_options).attrs)
    out["ngff_version"] = ngff.ome_attrs(attrs)[0]
    wells: dict[str, list[str]] = {}
    missing = []
    for im in images:
        wells.setdefault(im.well or "-", []).append(im.field)
        try:
            im.level_shape()
        except (FileNotFoundError, KeyError, ValueError) as err:
            missing.append(f"{im.source}: {err}")
    if kind == "plate":
        meta = ngff.parse_plate(attrs, uri)
        out["plate"] = images[0].plate if images else meta.name
        out["declared_wells"] = len(meta.wells)
    out["wells"] = wells
    out["n_fields"] = len(images)
    out["problems"] = missing
    good = [im for im in images if f"{im.source}:" not in " ".join(missing)]
    if good:
        out["first_field"] = describe_image(good[0])
    for key in ("cellfm_channel_stats", "cellfm_convert"):
        if key in attrs:
            out[key] = attrs[key]
    return out


def format_description(d: dict[str, Any]) -> str:
    """Human-readable multi-line summary of `describe` output."""
    lines = [f"{d['uri']}: {d['kind']}" + (f" (NGFF {d['ngff_version']})" if d.get("ngff_version") else "")]
    if "wells" in d:
        lines.append(f"  wells: {len(d['wells'])}  fields: {d['n_fields']}")
        for well, fields in list(d["wells"].items())[:12]:
            lines.append(f"    {well}: fields {fields}")
        if len(d["wells"]) > 12:
            lines.append(f"    ... {len(d['wells']) - 12} more wells")
        for p in d.get("problems", []):
            lines.append(f"  problem: {p}")
    img = d.get("first_field", d)
    if "levels" in img:
        lines.append(f"  axes: {img['axes']}  dtype: {img['dtype']}  channels: {img['channels']}")
        for lvl in img["levels"]:
            lines.append(f"    level {lvl['path']!r}: shape {lvl['shape']} chunks {lvl['chunks']}")
        lines.append(f"  labels: {img['labels'] or 'none'}")
    if "cellfm_channel_stats" in d:
        lines.append(f"  channel statistics: saved (level {d['cellfm_channel_stats'].get('level')})")
    return "\n".join(lines)
