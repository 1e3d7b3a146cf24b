"""Write OME-Zarr: NGFF 0.4 (Zarr v2) or 0.5 (Zarr v3) image groups with a pyramid, and HCS plate metadata.

cellfm's own small writer, producing what the spec and ome-zarr-models require (tests validate every
store with ome-zarr-models and read it back with ome-zarr-py and napari-ome-zarr); labels are in
`ngff_labels.py`. ome-zarr-py's writer is not used: its `write_image` drops an `omero` block given
as metadata (0.18) and it cannot resume a plate field by field."""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import zarr

NGFF_VERSIONS = ("0.4", "0.5")
AXES_5D = [
    {"name": "t", "type": "time"},
    {"name": "c", "type": "channel"},
    {"name": "z", "type": "space", "unit": "micrometer"},
    {"name": "y", "type": "space", "unit": "micrometer"},
    {"name": "x", "type": "space", "unit": "micrometer"},
]


def zarr_format(version: str) -> int:
    """Zarr format for an NGFF version: 0.4 -> 2, 0.5 -> 3."""
    if version not in NGFF_VERSIONS:
        raise ValueError(f"unsupported NGFF version {version!r} (expected one of {NGFF_VERSIONS})")
    return 2 if version == "0.4" else 3


def with_version(version: str, block: dict[str, Any]) -> dict[str, Any]:
    """Wrap an OME block as the attributes of a group of the given NGFF version."""
    if version == "0.5":  # strict 0.5 readers want the plate's own version too
        plate = {"plate": {**block["plate"], "version": "0.5"}} if "plate" in block else {}
        return {"ome": {"version": "0.5", **block, **plate}}
    block = {k: (dict(v) if isinstance(v, dict) else v) for k, v in block.items()}
    for key in ("plate", "well"):
        if key in block:
            block[key]["version"] = "0.4"
    if "multiscales" in block:
        block["multiscales"] = [{"version": "0.4", **m} for m in block["multiscales"]]
    return block


def compressor(version: str, clevel: int = 5) -> Any:
    """Blosc/zstd with bit-shuffle: good ratio on microscopy integers and fast to decode."""
    if version == "0.4":
        from numcodecs import Blosc

        return Blosc(cname="zstd", clevel=clevel, shuffle=Blosc.BITSHUFFLE)
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=clevel, shuffle="bitshuffle")


def pyramid_shapes(
    height: int, width: int, min_size: int = 256, max_levels: int = 8
) -> list[tuple[int, int]]:
    """(H, W) per level, halving until the shorter side would drop below `min_size`."""
    shapes = [(height, width)]
    while len(shapes) < max_levels and min(shapes[-1]) // 2 >= min_size:
        h, w = shapes[-1]
        shapes.append((h // 2, w // 2))
    return shapes


def channel_windows(data: np.ndarray, dtype: np.dtype, low: float = 0.1, high: float = 99.9) -> list[dict]:
    """`omero.window` per channel of a (C, H, W) array: start/end at the `low`/`high` percentiles of the
    data (so viewers show it with contrast), min/max the dtype's range (the data's range for floats)."""
    dt = np.dtype(dtype)
    flat = np.asarray(data, dtype=np.float64).reshape(len(data), -1)
    windows = []
    for values in flat:
        start, end = (float(v) for v in np.percentile(values, [low, high]))
        if end <= start:
            end = start + (1.0 if dt.kind in "ui" else max(abs(start), 1.0) * 1e-3)
        lo, hi = (float(np.iinfo(dt).min), float(np.iinfo(dt).max)) if dt.kind in "ui" else (
            min(float(values.min()), start), max(float(values.max()), end))  # fmt: skip
        windows.append({"min": lo, "max": hi, "start": start, "end": end})
    return windows


def omero_block(names: list[str], dtype: np.dtype, windows: list[dict] | None = None) -> dict[str, Any]:
    """`omero` rendering metadata: channel labels, colours, display windows (dtype range if not given)."""
    dt = np.dtype(dtype)
    top = float(np.iinfo(dt).max) if dt.kind in "ui" else 1.0
    default = {"min": 0.0, "max": top, "start": 0.0, "end": top}
    colors = ["0000FF", "00FF00", "FF0000", "FF00FF", "FFFF00", "00FFFF", "FFFFFF"]
    return {
        "channels": [
            {
                "label": n,
                "color": colors[i % len(colors)],
                "active": True,
                "window": dict(windows[i]) if windows else dict(default),
            }  # fmt: skip
            for i, n in enumerate(names)
        ],
        "rdefs": {"model": "color"},
    }


def level_scales(pixel_size: float | tuple[float, float], n_levels: int) -> list[list[float]]:
    """tczyx `scale` per pyramid level: (y, x) pixel size in micrometres, doubled at each level."""
    py, px = (pixel_size, pixel_size) if np.isscalar(pixel_size) else pixel_size
    if not (float(py) > 0 and float(px) > 0):
        raise ValueError(f"pixel size must be positive micrometres, got {pixel_size}")
    return [[1.0, 1.0, 1.0, float(py) * 2**i, float(px) * 2**i] for i in range(n_levels)]


def multiscales_entry(paths: list[str], scales: list[list[float]], name: str) -> dict[str, Any]:
    """One `multiscales` entry over tczyx levels `paths` with their scales."""
    datasets = [{"path": p, "coordinateTransformations": [{"type": "scale", "scale": sc}]}
                for p, sc in zip(paths, scales)]  # fmt: skip
    return {"axes": AXES_5D, "datasets": datasets, "name": name}


def create_level(
    group: zarr.Group, path: str, shape: tuple, chunk: int, dtype: Any, version: str
) -> zarr.Array:
    """An empty tczyx array for one pyramid level, chunked (1, C, 1, chunk, chunk), compressed."""
    c, lh, lw = shape[1], shape[3], shape[4]
    return group.create_array(
        path, shape=shape, chunks=(1, c, 1, min(chunk, lh), min(chunk, lw)), dtype=dtype,
        compressors=compressor(version), fill_value=0, overwrite=True, config={"write_empty_chunks": True},
        **({"chunk_key_encoding": {"name": "v2", "separator": "/"}} if version == "0.4" else {"dimension_names": list("tczyx")}),
    )  # fmt: skip


def _downsample(level: da.Array) -> da.Array:
    """2x2 mean over y, x of a (t, c, z, y, x) array, back in the input dtype."""
    dtype = level.dtype
    out = da.coarsen(np.mean, level.astype(np.float32), {3: 2, 4: 2}, trim_excess=True)
    if np.dtype(dtype).kind in "ui":
        out = da.round(out)
    return out.astype(dtype)


def write_image(
    group: zarr.Group,
    data: da.Array | np.ndarray,
    channel_names: list[str],
    version: str,
    *,
    chunk: int = 256,
    min_level_size: int = 256,
    pixel_size: float | tuple[float, float] = 1.0,
    num_workers: int = 2,
) -> list[str]:
    """Write a (C, H, W) image into `group` as a 5-D tczyx pyramid plus multiscales/omero metadata.

    `pixel_size` is micrometres per pixel, (y, x) or one number; display windows come from the data."""
    data = da.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"{group.store}/{group.path}: expected a (C, H, W) image, got shape {data.shape}")
    c, h, w = data.shape
    if len(channel_names) != c:
        raise ValueError(f"{group.path}: {len(channel_names)} channel names for {c} channels")
    shapes = pyramid_shapes(h, w, min_level_size)
    scales = level_scales(pixel_size, len(shapes))
    level = data[None, :, None]
    paths = []
    for i, (lh, lw) in enumerate(shapes):
        path = str(i)
        arr = create_level(group, path, (1, c, 1, lh, lw), chunk, data.dtype, version)
        if i > 0:
            level = _downsample(da.from_zarr(group[str(i - 1)]))
        level = level[..., :lh, :lw].rechunk(arr.chunks)
        da.store(level, arr, lock=False, scheduler="threads", num_workers=num_workers)
        paths.append(path)
    windows = channel_windows(group[paths[-1]][0, :, 0], data.dtype)  # coarsest level: cheap, representative
    block = {
        "multiscales": [multiscales_entry(paths, scales, group.path.rsplit("/", 1)[-1] or "image")],
        "omero": omero_block(channel_names, data.dtype, windows),
    }
    group.attrs.update(with_version(version, block))
    return paths


def plate_block(name: str, wells: dict[str, list[str]], acquisition: str = "0") -> dict[str, Any]:
    """The `plate` block for wells given as ``{"A/1": [field paths]}``."""
    rows = sorted({w.split("/")[0] for w in wells}, key=lambda r: (len(r), r))
    cols = sorted({w.split("/")[1] for w in wells}, key=lambda c: (len(c), int(c) if c.isdigit() else c))
    return {
        "plate": {
            "name": name,
            "rows": [{"name": r} for r in rows],
            "columns": [{"name": c} for c in cols],
            "wells": [
                {
                    "path": w,
                    "rowIndex": rows.index(w.split("/")[0]),
                    "columnIndex": cols.index(w.split("/")[1]),
                }
                for w in sorted(wells)
            ],  # fmt: skip
            "field_count": max(len(f) for f in wells.values()),
            "acquisitions": [{"id": int(acquisition) if acquisition.isdigit() else 0}],
        }
    }


def well_block(fields: list[str]) -> dict[str, Any]:
    """The `well` block listing field image paths."""
    return {"well": {"images": [{"path": f, "acquisition": 0} for f in fields]}}


def create_plate(
    out: str, name: str, wells: dict[str, list[str]], version: str, mode: str = "a"
) -> zarr.Group:
    """Create (or reopen) a plate group with row/column/well groups and their metadata."""
    root = zarr.open_group(out, mode=mode, zarr_format=zarr_format(version))
    root.attrs.update(with_version(version, plate_block(name, wells)))
    for well, fields in wells.items():
        row, col = well.split("/")
        grp = root.require_group(row).require_group(col)
        grp.attrs.update(with_version(version, well_block(fields)))
    return root
