"""Find the fields in a store: HCS plate -> wells -> fields, a single well, an image, an array or a TIFF."""

from __future__ import annotations

import logging
import os
import re

import zarr

from cellfm.data import ngff
from cellfm.data.stores import BIOIO_SUFFIXES, Image, is_tiff, join, open_node

log = logging.getLogger(__name__)


def store_kind(uri: str, storage_options: dict | None = None) -> str:
    """One of 'tiff', 'plate', 'well', 'image', 'labels', 'array'; errors say what was found otherwise."""
    if is_tiff(uri):
        return "tiff"
    if str(uri).lower().endswith(BIOIO_SUFFIXES):
        raise ValueError(
            f"{uri}: a microscope file, not a store; convert it first: cellfm convert {uri} -o OUT.ome.zarr"
        )
    node = open_node(uri, "", storage_options)
    if isinstance(node, zarr.Array):
        return "array"
    attrs = dict(node.attrs)
    kind = ngff.kind_of(attrs)
    if kind is None:
        children = sorted(node.keys())[:10]
        raise ValueError(
            f"{uri}: a Zarr group but not OME-Zarr: no 'plate', 'well', 'multiscales' or 'labels' metadata "
            f"(attribute keys {sorted(attrs)}, children {children})"
        )
    return kind


def plate_name(uri: str, meta: ngff.PlateMeta | None = None) -> str:
    """Plate name from metadata, else the store's base name without extensions."""
    if meta is not None and meta.name:
        return meta.name
    base = os.path.basename(str(uri).rstrip("/"))
    for suffix in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


def well_name(path: str) -> str:
    """'A/1', 'A01', 'a1' -> 'A1' (zero-padding and separators dropped)."""
    m = re.fullmatch(r"\s*([A-Za-z]+)[\s/_-]*0*(\d+)\s*", path)
    return f"{m.group(1).upper()}{int(m.group(2))}" if m else path.replace("/", "")


def list_fields(
    uri: str,
    level: int | str = 0,
    *,
    wells: list[str] | None = None,
    fields: list[str] | None = None,
    strict: bool = True,
    axes: str | None = None,
    storage_options: dict | None = None,
) -> list[Image]:
    """All fields of a store as lazily-opened `Image`s. Missing wells raise when `strict`, else warn."""
    kind = store_kind(uri, storage_options)
    common = {"level": level, "axes": axes, "storage_options": storage_options}
    if kind in ("tiff", "array", "image"):
        return [Image(uri, "", plate=plate_name(uri), well="", field="0", **common)]
    if kind == "labels":
        raise ValueError(f"{uri}: this is an OME-Zarr labels group; open the image that owns it")
    root = open_node(uri, "", storage_options)
    if kind == "well":
        meta = ngff.parse_well(dict(root.attrs), uri)
        return [Image(uri, p, plate=plate_name(uri), well="", field=p, **common) for p in meta.images]
    meta = ngff.parse_plate(dict(root.attrs), uri)
    name = plate_name(uri, meta)
    wanted = {well_name(w) for w in wells} if wells else None
    if wanted:
        unknown = wanted - {well_name(w) for w in meta.wells}
        if unknown:
            raise KeyError(
                f"{uri}: wells {sorted(unknown)} not in plate metadata (has {len(meta.wells)} wells)"
            )
    out: list[Image] = []
    for well_path in meta.wells:
        if wanted and well_name(well_path) not in wanted:
            continue
        try:
            well_meta = ngff.parse_well(
                dict(open_node(uri, well_path, storage_options).attrs), join(uri, well_path)
            )
        except (FileNotFoundError, ValueError) as err:
            if strict:
                raise KeyError(
                    f"{join(uri, well_path)}: well listed in plate metadata is missing ({err})"
                ) from err
            log.warning("skipping missing well %s: %s", join(uri, well_path), err)
            continue
        for image_path in well_meta.images:
            if fields and image_path not in fields:
                continue
            out.append(Image(uri, f"{well_path}/{image_path}", plate=name, well=well_name(well_path),
                             field=image_path, **common))  # fmt: skip
    if fields and not out:
        raise KeyError(f"{uri}: no field named {fields} in any selected well")
    return out


def check_fields(images: list[Image], strict: bool = True) -> list[Image]:
    """Open each image's metadata; drop (warn) or raise on fields that are missing or broken."""
    good = []
    for image in images:
        try:
            image.level_shape()
            good.append(image)
        except (FileNotFoundError, KeyError, ValueError) as err:
            if strict:
                raise
            log.warning("skipping field %s: %s", image.source, err)
    return good
