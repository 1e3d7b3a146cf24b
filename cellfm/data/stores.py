"""Open images: OME-Zarr (NGFF 0.4 / 0.5), plain Zarr arrays and (OME-)TIFF, local paths or fsspec URLs.

`Image` is one multi-channel 2D field at a chosen multiscale level. It opens its store lazily and drops
the handles when pickled, so it can be built in the parent and used inside DataLoader workers.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import zarr

from cellfm.data import ngff
from cellfm.data.checked_read import read_region

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")
# microscope formats `cellfm convert` reads through the optional bioio readers (cellfm.data.bioio_reader)
BIOIO_SUFFIXES = (".nd2", ".czi", ".lif")
# Dtype kinds a crop can become float32 from: bool, signed and unsigned int, float.
SUPPORTED_DTYPE_KINDS = "biuf"
# tifffile axis letters -> NGFF axis names; S (RGB samples) acts as channels.
_TIFF_AXES = {"C": "c", "S": "c", "Y": "y", "X": "x", "Z": "z", "T": "t"}


def is_tiff(uri: str) -> bool:
    """True when `uri` names a TIFF file by its suffix."""
    return str(uri).lower().rstrip("/").endswith(TIFF_SUFFIXES)


def join(uri: str, path: str) -> str:
    """Join a store URI and a path inside it."""
    return f"{str(uri).rstrip('/')}/{path}" if path else str(uri)


def check_dtype(dtype: Any, where: str) -> np.dtype:
    """Reject dtypes a float32 crop cannot be made from (complex, strings, objects, structs)."""
    dt = np.dtype(dtype)
    if dt.kind not in SUPPORTED_DTYPE_KINDS:
        raise ValueError(f"{where}: unsupported dtype {dt} (expected bool, integer or float)")
    return dt


def open_node(uri: str, path: str = "", storage_options: dict | None = None) -> zarr.Group | zarr.Array:
    """Open a Zarr group or array read-only; a clear error when nothing Zarr is there."""
    target = join(uri, path)
    try:
        return zarr.open(store=str(uri), path=path or None, mode="r", storage_options=storage_options)
    except (FileNotFoundError, KeyError) as err:
        raise FileNotFoundError(
            f"{target}: no Zarr group or array here ({describe_missing(target)})"
        ) from err
    except ValueError as err:  # zarr raises ValueError for storage_options on local paths etc.
        raise ValueError(f"{target}: cannot open as Zarr: {err}") from err


def describe_missing(target: str) -> str:
    """Say what is at a path that did not open as Zarr (for error messages)."""
    if "://" in target and not target.startswith("file://"):
        return "no Zarr metadata found"
    local = target.removeprefix("file://")
    if not os.path.exists(local):
        return "path does not exist"
    if os.path.isdir(local):
        entries = sorted(os.listdir(local))[:10]
        return f"directory holds {entries} and no .zgroup/.zarray/zarr.json"
    return f"a file of {os.path.getsize(local)} bytes, not a Zarr store"


def guess_axes(ndim: int) -> tuple[str, ...]:
    """Axes for arrays that carry none: 2 -> yx, 3 -> cyx, 4 -> czyx, 5 -> tczyx."""
    if not 2 <= ndim <= 5:
        raise ValueError(f"cannot guess axes for a {ndim}-D array (expected 2 to 5 dimensions)")
    return ("t", "c", "z", "y", "x")[-ndim:] if ndim != 3 else ("c", "y", "x")


class Image:
    """One multi-channel field at one level; `read(y, x, h, w)` returns a (C, h, w) NumPy array."""

    def __init__(
        self,
        uri: str,
        path: str = "",
        level: int | str = 0,
        *,
        plate: str = "",
        well: str = "",
        field: str = "",
        t: int = 0,
        z: int = 0,
        axes: str | None = None,
        storage_options: dict | None = None,
    ) -> None:
        self.uri, self.path, self.level = str(uri), path, level
        self.plate, self.well, self.field = plate, well, field
        self.t, self.z = t, z
        self.axes_override = tuple(axes.lower()) if axes else None
        self.storage_options = storage_options
        self.channel_select: list[int] | None = None  # reorder / subset channels (set by datasets)
        self._state: dict[str, Any] | None = None

    # -- pickling: drop open handles so workers reopen their own -------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_state"] = None
        return state

    def __repr__(self) -> str:
        return f"Image({self.source!r}, level={self.level!r})"

    @property
    def source(self) -> str:
        """URI of the field group (or file) this image reads."""
        return join(self.uri, self.path)

    # -- opening ---------------------------------------------------------------------------------------
    def _open(self) -> dict[str, Any]:
        # Handles opened before a fork (DataLoader workers) are dropped and reopened in the child.
        if self._state is None or self._state["pid"] != os.getpid():
            self._state = self._open_tiff() if is_tiff(self.uri) else self._open_zarr()
            self._state["level_index"] = self._level_index(self._state["paths"])
            self._state["pid"] = os.getpid()
        return self._state

    def _open_zarr(self) -> dict[str, Any]:
        node = open_node(self.uri, self.path, self.storage_options)
        if isinstance(node, zarr.Array):
            axes = self.axes_override or guess_axes(node.ndim)
            names = None
            return {"kind": "array", "axes": axes, "paths": [""], "arrays": {"": node}, "names": names}
        attrs = dict(node.attrs)
        kind = ngff.kind_of(attrs)
        if kind != "image":
            found = f"an OME-Zarr {kind} group" if kind else f"a Zarr group with attributes {sorted(attrs)}"
            raise ValueError(f"{self.source}: expected an OME-Zarr image (multiscales), found {found}")
        ms = ngff.parse_multiscales(attrs, self.source)
        return {"kind": "ome", "axes": ms.axes, "paths": list(ms.paths), "arrays": {}, "node": node,
                "attrs": attrs, "version": ms.version, "names": None}  # fmt: skip

    def _open_tiff(self) -> dict[str, Any]:
        import tifffile

        if "://" in self.uri and not self.uri.startswith("file://"):
            import fsspec

            handle = fsspec.open(self.uri, "rb", **(self.storage_options or {})).open()
            tif = tifffile.TiffFile(handle)
        else:
            tif = tifffile.TiffFile(self.uri.removeprefix("file://"))
        series = tif.series[0]
        letters = series.axes.upper()
        axes = tuple(_TIFF_AXES.get(a, "?") for a in letters)
        if "?" in axes:  # unknown leading axis (Q, I, ...): treat a single one as channels
            if axes.count("?") == 1 and "c" not in axes:
                axes = tuple("c" if a == "?" else a for a in axes)
            else:
                raise ValueError(f"{self.uri}: unsupported TIFF axes {letters!r}")
        if self.axes_override:
            axes = self.axes_override
        arrays = {str(i): zarr.open(lvl.aszarr(), mode="r") for i, lvl in enumerate(series.levels)}
        names = None
        if tif.is_ome:
            try:
                pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
                pixels = (pixels[0] if isinstance(pixels, list) else pixels)["Pixels"]
                chans = pixels.get("Channel", [])
                chans = chans if isinstance(chans, list) else [chans]
                names = [str(c.get("Name", "")) for c in chans]
            except (KeyError, TypeError, IndexError):
                names = None
        return {"kind": "tiff", "axes": axes, "paths": list(arrays), "arrays": arrays, "names": names,
                "tif": tif}  # fmt: skip

    def _level_index(self, paths: list[str]) -> int:
        if isinstance(self.level, str) and not self.level.lstrip("-").isdigit():
            if self.level not in paths:
                raise KeyError(f"{self.source}: no level {self.level!r} (available: {paths})")
            return paths.index(self.level)
        index = int(self.level)
        if not -len(paths) <= index < len(paths):
            raise KeyError(f"{self.source}: level {index} out of range ({len(paths)} levels: {paths})")
        return index % len(paths)

    # -- description -----------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """'ome', 'array' or 'tiff'."""
        return self._open()["kind"]

    @property
    def axes(self) -> tuple[str, ...]:
        """Axis names of the stored arrays, e.g. ('t', 'c', 'z', 'y', 'x')."""
        return self._open()["axes"]

    @property
    def levels(self) -> list[str]:
        """Dataset paths of the multiscale levels, finest first."""
        return list(self._open()["paths"])

    def array(self, level: int | None = None) -> zarr.Array:
        """The Zarr array of a level (default: the chosen level)."""
        state = self._open()
        path = state["paths"][state["level_index"] if level is None else level]
        if path not in state["arrays"]:
            try:
                arr = state["node"][path]
            except KeyError as err:
                raise KeyError(f"{join(self.source, path)}: multiscale level listed but missing") from err
            if len(arr.shape) != len(state["axes"]):
                raise ValueError(
                    f"{join(self.source, path)}: shape {arr.shape} does not match axes {state['axes']}"
                )
            check_dtype(arr.dtype, join(self.source, path))
            state["arrays"][path] = arr
        return state["arrays"][path]

    def _dim(self, arr: zarr.Array, axis: str) -> int:
        return arr.shape[self.axes.index(axis)] if axis in self.axes else 1

    def level_shape(self, level: int | None = None) -> tuple[int, int, int]:
        """(C, H, W) of a level, counting all stored channels."""
        arr = self.array(level)
        return self._dim(arr, "c"), self._dim(arr, "y"), self._dim(arr, "x")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the chosen level after channel selection."""
        c, h, w = self.level_shape()
        return (len(self.channel_select) if self.channel_select is not None else c), h, w

    @property
    def dtype(self) -> np.dtype:
        """Stored dtype."""
        return check_dtype(self.array().dtype, self.source)

    @property
    def chunks_yx(self) -> tuple[int, int]:
        """Chunk size along y and x at the chosen level."""
        arr = self.array()
        return arr.chunks[self.axes.index("y")], arr.chunks[self.axes.index("x")]

    @property
    def stored_channel_names(self) -> list[str]:
        """Channel names as stored (OME `omero.channels[].label`, OME-TIFF `Channel@Name`) or c0, c1..."""
        state = self._open()
        n = self.level_shape()[0]
        if state["kind"] == "ome":
            return ngff.channel_labels(state["attrs"], n)
        names = state["names"]
        return names if names and len(names) == n and all(names) else [f"c{i}" for i in range(n)]

    @property
    def channel_names(self) -> list[str]:
        """Channel names after channel selection."""
        names = self.stored_channel_names
        return names if self.channel_select is None else [names[i] for i in self.channel_select]

    def scale_to_level0(self, level: int | None = None) -> float:
        """How many level-0 pixels one pixel of `level` spans along y."""
        return self.level_shape(0)[1] / self.level_shape(level)[1]

    # -- reading ---------------------------------------------------------------------------------------
    def _index(self, y: int, x: int, h: int, w: int, arr: zarr.Array) -> tuple[Any, ...]:
        index: list[Any] = []
        for axis in self.axes:
            if axis == "y":
                index.append(slice(y, y + h))
            elif axis == "x":
                index.append(slice(x, x + w))
            elif axis == "c":
                index.append(slice(None))
            else:
                size = self._dim(arr, axis)
                pos = self.t if axis == "t" else self.z
                if not 0 <= pos < size:
                    raise IndexError(f"{self.source}: {axis}={pos} out of range (size {size})")
                index.append(pos)
        return tuple(index)

    def read(self, y: int, x: int, h: int, w: int, level: int | None = None) -> np.ndarray:
        """Read a (C, h, w) window at (y, x) of a level (stored dtype, channel selection applied)."""
        arr = self.array(level)
        _, height, width = self.level_shape(level)
        if y < 0 or x < 0 or y + h > height or x + w > width:
            raise IndexError(f"{self.source}: window y={y} x={x} h={h} w={w} outside image {height}x{width}")
        data = read_region(self, arr, self._index(y, x, h, w, arr))  # damaged chunks raise BadData
        kept = [a for a in self.axes if a in ("c", "y", "x")]
        data = np.transpose(data, [kept.index(a) for a in ("c", "y", "x") if a in kept])
        if "c" not in kept:
            data = data[None]
        if self.channel_select is not None:
            data = data[self.channel_select]
        return data

    def read_full(self, level: int | None = None) -> np.ndarray:
        """The whole (C, H, W) plane of a level."""
        _, h, w = self.level_shape(level)
        return self.read(0, 0, h, w, level)

    def missing_chunks(self, y: int, x: int, h: int, w: int) -> list[str]:
        """Store keys of the chunks a window needs that are absent (Zarr-backed images only)."""
        state = self._open()
        if state["kind"] == "tiff":
            return []
        arr = self.array()
        if "present" not in state:
            state["present"] = None if arr.nchunks_initialized == arr.nchunks else list_chunk_keys(arr)
        if state["present"] is None:
            return []
        ranges = []
        for axis, chunk in zip(self.axes, arr.chunks):
            if axis == "y":
                ranges.append(range(y // chunk, (y + h - 1) // chunk + 1))
            elif axis == "x":
                ranges.append(range(x // chunk, (x + w - 1) // chunk + 1))
            elif axis == "c":
                ranges.append(range(0, (arr.shape[self.axes.index("c")] - 1) // chunk + 1))
            else:
                pos = (self.t if axis == "t" else self.z) // chunk
                ranges.append(range(pos, pos + 1))
        keys = [arr.metadata.encode_chunk_key(tuple(r[i] for r, i in zip(ranges, idx)))
                for idx in np.ndindex(*[len(r) for r in ranges])]  # fmt: skip
        return [k for k in keys if k not in state["present"]]

    def labels_image(self, name: str | None = None) -> Image:
        """The `labels/<name>` image of this field (first listed when `name` is None), same level."""
        labels_path = join(self.path, "labels") if self.path else "labels"
        try:
            group = open_node(self.uri, labels_path, self.storage_options)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{join(self.source, 'labels')}: field has no labels group") from err
        names = ngff.labels_list(dict(group.attrs)) or sorted(group.group_keys())
        if not names:
            raise KeyError(f"{join(self.source, 'labels')}: labels group lists no label images")
        if name is not None and name not in names:
            raise KeyError(f"{join(self.source, 'labels')}: no label image {name!r} (available: {names})")
        return Image(self.uri, f"{labels_path}/{name or names[0]}", 0, plate=self.plate, well=self.well,
                     field=self.field, t=self.t, z=self.z, storage_options=self.storage_options)  # fmt: skip


def list_chunk_keys(arr: zarr.Array) -> set[str]:
    """Chunk keys present in the store for `arr` (relative to the array)."""
    from zarr.core.sync import sync

    prefix = arr.path.rstrip("/") + "/" if arr.path else ""

    async def collect() -> set[str]:
        return {k[len(prefix) :] async for k in arr.store.list_prefix(prefix)}

    return sync(collect())
