"""Checks around `cellfm convert`: a field is marked complete only once what was written is verified,
and a rerun with a subset of the inputs adds to the plate's wells and fields instead of replacing them."""

from __future__ import annotations

import logging
from pathlib import Path

import zarr

from cellfm.atomic import remove_stale_temps
from cellfm.data import ngff

log = logging.getLogger(__name__)


class FieldNotWritten(RuntimeError):
    """A converted field whose arrays do not hold what was written (shape or chunks)."""


def verify_field(group: zarr.Group, paths: list[str], shape: tuple[int, int, int], where: str) -> None:
    """Every pyramid level exists, level 0 has (1, C, 1, H, W), and every chunk of every level is stored."""
    c, h, w = shape
    for i, path in enumerate(paths):
        try:
            arr = group[path]
        except KeyError as err:
            raise FieldNotWritten(f"{where}/{path}: pyramid level missing after writing") from err
        if i == 0 and tuple(arr.shape) != (1, c, 1, h, w):
            raise FieldNotWritten(
                f"{where}/{path}: shape {arr.shape} after writing, expected {(1, c, 1, h, w)}"
            )
        stored, total = arr.nchunks_initialized, arr.nchunks
        if stored != total:
            raise FieldNotWritten(
                f"{where}/{path}: {stored} of {total} chunks stored after writing (another writer, or a "
                "failed write); the field is not marked complete and is written again on the next run"
            )


def merged_wells(out: str, wells: dict[str, list[str]]) -> dict[str, list[str]]:
    """`wells` plus the wells and fields an existing plate at `out` already lists (order kept)."""
    try:
        root = zarr.open_group(out, mode="r")
        plate = ngff.parse_plate(dict(root.attrs), out)
    except (FileNotFoundError, KeyError, ValueError):
        return wells
    merged: dict[str, list[str]] = {}
    for well in plate.wells:
        try:
            merged[well] = list(ngff.parse_well(dict(root[well].attrs), f"{out}/{well}").images)
        except (KeyError, ValueError):
            merged[well] = []
    for well, fields in wells.items():
        have = merged.setdefault(well, [])
        have += [f for f in fields if f not in have]
    added = sum(len(f) for f in merged.values()) - sum(len(f) for f in wells.values())
    if added:
        log.info("%s: keeping %d fields of earlier conversions in the plate metadata", out, added)
    return merged


def clean_marker_temps(out: str, keys: list[str]) -> None:
    """Remove completion-marker temp files left by a killed convert (local stores; under the lock)."""
    if "://" in out and not out.startswith("file://"):
        return
    root = Path(out.removeprefix("file://"))
    for key in keys:
        if (root / key).is_dir():
            remove_stale_temps(root / key, ".cellfm-complete.tmp-*")
