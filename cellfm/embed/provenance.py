"""`uns["cellfm"]`: where an embedding came from (checkpoint, architecture, settings, versions)."""

from __future__ import annotations

import logging
from importlib import metadata as importlib_metadata
from typing import Any

from cellfm.data import ngff
from cellfm.data.plates import store_kind, well_name
from cellfm.data.stores import open_node

log = logging.getLogger(__name__)


def versions() -> dict[str, str]:
    """Installed versions of the packages that shape the numbers."""
    out = {}
    for name in ("cellfm", "torch", "numpy", "anndata", "zarr"):
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def clean(value: Any) -> Any:
    """Nested dicts / lists that h5ad and zarr can store: None becomes "none", tuples become lists."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [clean(v) for v in value]
        return items if items else []
    return "none" if value is None else value


def empty_wells(stores: list[str], plan: list, counts: list[int]) -> list[str]:
    """Plate wells that gave no rows (no fields, or no objects); each is logged."""
    rows_per_well: dict[tuple[str, str], int] = {}
    for info, n in zip(plan, counts):
        key = (info.plate, info.well)
        rows_per_well[key] = rows_per_well.get(key, 0) + n
    listed = set(rows_per_well)
    for uri in stores:
        if store_kind(uri) != "plate":
            continue
        meta = ngff.parse_plate(dict(open_node(uri).attrs), uri)
        plate = next((p.plate for p in plan if p.source.startswith(str(uri).rstrip("/"))), "")
        for well in meta.wells:
            key = (plate, well_name(well))
            if key not in listed:
                rows_per_well[key] = 0
    empty = sorted(f"{p}/{w}" for (p, w), n in rows_per_well.items() if n == 0)
    for name in empty:
        log.warning("well %s gave no rows (no fields or no objects)", name)
    return empty


def provenance(meta: dict, cfg, encoder, channels: list[str], norm: dict, stores: list[str], digest: str,
               empty: list[str], patch_features) -> dict[str, Any]:  # fmt: skip
    """The `uns["cellfm"]` block."""
    tile, overlap, crop = cfg.grid(encoder.patch_size)
    return clean({
        "checkpoint_sha256": digest,
        "checkpoint": str(meta.get("source", "")),
        "architecture": meta["arch"],
        "channel_strategy": encoder.strategy,
        "level": cfg.level,
        "pooling": cfg.pooling,
        "channels": channels,
        "normalization": norm,
        "image_level": str(cfg.image_level),
        "labels": cfg.labels,
        "tile_size": tile,
        "overlap": overlap,
        "crop_size": crop,
        "min_area": cfg.min_area,
        "int8": cfg.int8,
        "stores": stores,
        "empty_wells": empty,
        "patch_features": str(patch_features) if patch_features else None,
        "versions": versions(),
    })  # fmt: skip
