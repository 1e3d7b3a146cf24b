"""TIFF files -> OME-Zarr HCS plate, resumable: a field is done once its completion marker exists."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import dask
import dask.array as da
import fsspec
import numpy as np
import tifffile
import zarr
from fsspec.implementations.local import LocalFileSystem

from cellfm.data import bioio_reader, writer
from cellfm.data.bioio_reader import SceneRef
from cellfm.data.convert_checks import clean_marker_temps, merged_wells, verify_field
from cellfm.data.ngff_labels import write_labels
from cellfm.data.plates import plate_name as stem_name
from cellfm.data.stores import check_dtype
from cellfm.data.tiff_ingest import TiffRecord, channel_plan, group_fields, tiff_pixel_size

log = logging.getLogger(__name__)
MARKER = ".cellfm-complete"
PLAN_KEY = "cellfm_convert"


@dataclass
class ConvertReport:
    """What a conversion did: fields written now, fields already complete, output path."""

    out: str
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)
    pixel_size: tuple[float, float] = (1.0, 1.0)


def _tiff_info(path: str | SceneRef) -> tuple[tuple[int, ...], np.dtype, list[str] | None]:
    """Shape, dtype and OME channel names of a TIFF's first series (or a bioio scene), without reading pixels."""
    if isinstance(path, SceneRef):
        return bioio_reader.scene_info(path)
    if bioio_reader.is_bioio_file(path):
        raise ValueError(f"{path}: give .nd2/.czi/.lif files as convert inputs (their scenes become fields)")
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        names = None
        if tif.is_ome:
            try:
                image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
                chans = (image[0] if isinstance(image, list) else image)["Pixels"].get("Channel", [])
                names = [str(c.get("Name", "")) for c in (chans if isinstance(chans, list) else [chans])]
            except (KeyError, TypeError, IndexError):
                names = None
        return tuple(series.shape), np.dtype(series.dtype), names


def _as_cyx(shape: tuple[int, ...], path: str) -> tuple[int, int, int]:
    squeezed = [s for s in shape[:-2] if s != 1]
    if len(squeezed) > 1:
        raise ValueError(f"{path}: TIFF shape {shape} has more than one non-singleton leading axis")
    return (squeezed[0] if squeezed else 1), shape[-2], shape[-1]


def _lazy_field(files: list[str], shape: tuple[int, int, int], dtype: np.dtype) -> da.Array:
    """A (C, H, W) dask array reading each TIFF only when computed."""
    parts = []
    for path in files:
        c, h, w = _as_cyx(_tiff_info(path)[0], path)
        if (h, w) != shape[1:]:
            raise ValueError(f"{path}: image is {h}x{w}, other files of this plate are {shape[1]}x{shape[2]}")
        read = bioio_reader.read_scene if isinstance(path, SceneRef) else tifffile.imread
        delayed = dask.delayed(lambda p=path, s=(c, h, w), r=read: r(p).reshape(s))()
        parts.append(da.from_delayed(delayed, shape=(c, h, w), dtype=dtype))
    return da.concatenate(parts, axis=0)


def _read_labels(path: str, shape: tuple[int, int]) -> np.ndarray:
    """A 2-D integer label TIFF of the field's shape."""
    labels = np.squeeze(tifffile.imread(path))
    if labels.shape != shape or labels.dtype.kind not in "ui":
        raise ValueError(
            f"{path}: labels must be a {shape[0]}x{shape[1]} integer image, got {labels.dtype} {labels.shape}"
        )
    return labels


def _fs(out: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(out)


def _marker_exists(fs: fsspec.AbstractFileSystem, root: str, key: str) -> bool:
    return fs.exists(f"{root}/{key}/{MARKER}")


def _write_marker(fs: fsspec.AbstractFileSystem, root: str, key: str, payload: dict) -> None:
    """Atomically publish the completion marker (local: write + rename; object stores: one PUT)."""
    data = json.dumps(payload).encode()
    target = f"{root}/{key}/{MARKER}"
    if isinstance(fs, LocalFileSystem):
        tmp = f"{target}.tmp-{os.getpid()}"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    else:
        fs.pipe_file(target, data)


def convert_plate(records: list[TiffRecord], out: str, **options) -> ConvertReport:
    """Write the TIFF `records` as an OME-Zarr plate at `out` (one convert per output at a time: `OUT.lock`);
    rerunning skips fields already complete, and a rerun with fewer inputs keeps the other fields listed."""
    from cellfm.locking import exclusive

    with exclusive(out, "cellfm convert"):
        return _convert_plate(records, out, **options)


def _convert_plate(
    records: list[TiffRecord],
    out: str,
    *,
    channel_names: list[str] | None = None,
    channel_order: list[str] | None = None,
    version: str = "0.4",
    chunk: int = 256,
    min_level_size: int = 256,
    num_workers: int = 2,
    plate_name: str | None = None,
    pixel_size: tuple[float, float] | None = None,
    labels: dict[tuple[str, str], dict[str, str]] | None = None,
    on_field_done: Callable[[str], None] | None = None,
) -> ConvertReport:
    """Write the TIFF `records` as an OME-Zarr plate at `out`; rerunning skips fields already complete.

    Channels from file names are ordered and labelled by `tiff_ingest.channel_plan`; the plate is
    named `plate_name`, else the records' plate, else the output's stem. `pixel_size` (y, x) in
    micrometres defaults to the first file's OME-TIFF / ImageJ calibration or bioio metadata (else 1).
    `labels` maps (well, field) to {name: label TIFF}, written as NGFF labels of that field."""
    plate, channels, fields = group_fields(records)
    first_files = list(next(iter(fields.values())).values())
    shape0, dtype, ome_names = _tiff_info(first_files[0])
    check_dtype(dtype, first_files[0])
    c0, h, w = _as_cyx(shape0, first_files[0])
    n_channels = len(channels) if channels else c0
    if channels:  # one file per channel: order and labels by token, never by position (see channel_plan)
        channels, names = channel_plan(channels, channel_order, channel_names)
    else:
        if channel_order:
            raise ValueError(f"channel order {channel_order} given, but the file names carry no channel")
        names = list(channel_names or ome_names or [f"c{i}" for i in range(n_channels)])
        if ome_names and channel_names and sorted(names) == sorted(ome_names) and names != ome_names:
            raise ValueError(f"channel names {names} reorder the OME channels {ome_names} of {first_files[0]}; "
                             "names are given in the file's channel order")  # fmt: skip
    if len(names) != n_channels:
        raise ValueError(f"{len(names)} channel names {names} for {n_channels} channels in {first_files[0]}")
    if len(set(names)) != len(names):
        raise ValueError(f"channel names must be unique, got {names}")
    wells: dict[str, list[str]] = {}
    for well, fld in fields:
        wells.setdefault(well, []).append(fld)
    plan = {"channels": names, "version": version, "shape": [n_channels, h, w], "dtype": str(dtype),
            "fields": [f"{wl}/{f}" for wl, f in fields]}  # fmt: skip
    source_pixel = bioio_reader.scene_pixel_size if isinstance(first_files[0], SceneRef) else tiff_pixel_size
    pixel_size = tuple(pixel_size or source_pixel(first_files[0]) or (1.0, 1.0))
    unknown = sorted(set(labels or {}) - set(fields))
    if unknown:
        raise ValueError(f"labels for fields {unknown[:5]} that have no image files")
    report = ConvertReport(out=out, channels=names, pixel_size=pixel_size)
    fs, root_path = _fs(out)
    if fs.exists(root_path):
        try:
            existing = zarr.open_group(out, mode="r").attrs.get(PLAN_KEY)
        except (FileNotFoundError, ValueError) as err:
            raise ValueError(f"{out}: exists but is not a Zarr group ({err}); choose another output") from err
        if existing is None:
            raise ValueError(f"{out}: exists and was not written by cellfm convert; refusing to overwrite")
        diffs = [k for k in ("channels", "version", "shape", "dtype") if existing.get(k) != plan[k]]
        if diffs:
            raise ValueError(f"{out}: earlier conversion differs in {diffs}: {[existing[k] for k in diffs]} "
                             f"vs now {[plan[k] for k in diffs]}")  # fmt: skip
    wells = merged_wells(out, wells)  # a rerun with a subset of the inputs keeps the other fields
    plan["fields"] = [f"{wl}/{f}" for wl, fl in wells.items() for f in fl]
    clean_marker_temps(out, plan["fields"])
    root = writer.create_plate(out, plate_name or plate or stem_name(out), wells, version)
    root.attrs[PLAN_KEY] = {**plan, "complete": False}
    for (well, fld), by_channel in fields.items():
        key = f"{well}/{fld}"
        if _marker_exists(fs, root_path, key):
            report.skipped.append(key)
            continue
        files = [by_channel[c] for c in channels] if channels else [by_channel[""]]
        data = _lazy_field(files, (n_channels, h, w), dtype)
        if data.shape[0] != n_channels:
            raise ValueError(f"{files}: {data.shape[0]} channels, expected {n_channels}")
        group = root[well].require_group(fld)
        paths = writer.write_image(group, data, names, version, chunk=chunk, min_level_size=min_level_size,
                                   pixel_size=pixel_size, num_workers=num_workers)  # fmt: skip
        for label_name, label_path in (labels or {}).get((well, fld), {}).items():
            write_labels(group, _read_labels(label_path, (h, w)), label_name, version, chunk=chunk)
        verify_field(group, paths, (n_channels, h, w), f"{out}/{key}")  # before the marker says complete
        _write_marker(fs, root_path, key, {"sources": [str(f) for f in files], "shape": [n_channels, h, w]})
        report.written.append(key)
        log.info("converted %s (%d/%d)", key, len(report.written) + len(report.skipped), len(fields))
        if on_field_done is not None:
            on_field_done(key)
    done = all(_marker_exists(fs, root_path, k) for k in plan["fields"])  # earlier runs' fields too
    root.attrs[PLAN_KEY] = {**plan, "complete": done}
    return report
