"""The one reader for stored pixels (fields, pyramid levels, labels, foreground masks): damaged data is
named, never silently returned.

Three cases are told apart for the chunks a read needs:
- *fill*: a chunk not stored in a sparse array: the store's fill value is the data (Zarr's normal
  behaviour with `write_empty_chunks=False`); returned as is;
- *absent*: a chunk missing from an array whose writer stored every chunk (the pyramid of a field
  finished by `cellfm convert`, which writes empty chunks too and leaves a completion marker, or an
  array whose attributes say `cellfm_all_chunks_written: true`): the data was written and is gone
  -> `BadData("absent_chunks")`. Other arrays (labels edited with Zarr's defaults, sparse stores)
  keep Zarr's meaning: a missing chunk is the fill value;
- *decode error*: a chunk that exists but does not decode (garbage, truncated) -> `BadData("decode_error")`.
Errors name the store, the array and the chunk keys. NaN/Inf pixels are found by `check_finite`.
"""

from __future__ import annotations

import itertools
import logging
import os
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
DENSE_ATTR = "cellfm_all_chunks_written"
CONVERT_MARKER = ".cellfm-complete"
BAD_DATA_POLICIES = ("skip", "fail")
NAN_POLICIES = ("error", "zero", "skip")


class BadData(ValueError):
    """Damaged or non-finite data; `record()` is the row kept in summaries and `uns["cellfm"]["skipped"]`."""

    def __init__(self, kind: str, source: str, array: str, chunks: list[str], detail: str):
        self.kind, self.source, self.array, self.chunks, self.detail = kind, source, array, chunks, detail
        shown = ", ".join(chunks[:6]) + (f" (+{len(chunks) - 6} more)" if len(chunks) > 6 else "")
        where = f"{source} array {array!r}" if array else source
        super().__init__(
            f"{where}: {kind.replace('_', ' ')}{f' in chunks {shown}' if chunks else ''}: {detail}"
        )

    def record(self) -> dict[str, str]:
        return {"source": self.source, "array": self.array, "kind": self.kind,
                "chunks": ",".join(self.chunks), "detail": self.detail}  # fmt: skip


def check_policy(on_bad_data: str, nan_policy: str) -> None:
    if on_bad_data not in BAD_DATA_POLICIES:
        raise ValueError(f"on_bad_data must be one of {BAD_DATA_POLICIES}, got {on_bad_data!r}")
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")


def _chunk_ranges(arr: Any, index: tuple[Any, ...]) -> list[range]:
    out = []
    for sel, size, chunk in zip(index, arr.shape, arr.chunks):
        if isinstance(sel, slice):
            start, stop, _ = sel.indices(size)
            out.append(range(start // chunk, max(start, stop - 1) // chunk + 1) if stop > start else range(0))
        else:
            out.append(range(int(sel) // chunk, int(sel) // chunk + 1))
    return out


def _chunk_slices(arr: Any, coords: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(c * k, min((c + 1) * k, s)) for c, k, s in zip(coords, arr.chunks, arr.shape))


def _stored_keys(state: dict, arr: Any) -> set[str]:
    """Chunk keys present for `arr` (listed once per array and process, cached in the image state)."""
    cache = state.setdefault("stored_chunk_keys", {})
    if arr.path not in cache:
        from cellfm.data.stores import list_chunk_keys

        cache[arr.path] = list_chunk_keys(arr)
    return cache[arr.path]


def all_chunks_written(image: Any, arr: Any) -> bool:
    """True when the writer of `arr` stored every chunk (so a missing one is lost data, not fill)."""
    if arr.attrs.get(DENSE_ATTR):
        return True
    state = image._state or {}
    if state.get("kind") != "ome":
        return False
    cache = state.setdefault("convert_marker", {})
    if "value" not in cache:
        import fsspec

        from cellfm.data.stores import join

        try:
            fs, root = fsspec.core.url_to_fs(join(image.uri, image.path), **(image.storage_options or {}))
            cache["value"] = fs.exists(f"{root.rstrip('/')}/{CONVERT_MARKER}")
        except (OSError, ValueError):
            cache["value"] = False
    return cache["value"]


def read_region(image: Any, arr: Any, index: tuple[Any, ...]) -> np.ndarray:
    """`arr[index]` for an `Image`'s array, raising `BadData` for absent chunks and decode errors."""
    state = image._open()
    name = arr.path or "(root array)"
    if state["kind"] != "tiff" and all_chunks_written(image, arr):
        stored = _stored_keys(state, arr)
        needed = itertools.product(*_chunk_ranges(arr, index))
        absent = [k for k in (arr.metadata.encode_chunk_key(c) for c in needed) if k not in stored]
        if absent:
            raise BadData("absent_chunks", image.source, name, absent,
                          "chunk files are missing where the array's writer stored every chunk")  # fmt: skip
    try:
        return np.asarray(arr[index])
    except (IndexError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as err:  # codec and store errors of any kind: find the chunks that fail
        bad = _failing_chunks(arr, index) if state["kind"] != "tiff" else []
        raise BadData("decode_error", image.source, name, bad, f"{type(err).__name__}: {err}") from err


def _failing_chunks(arr: Any, index: tuple[Any, ...]) -> list[str]:
    bad = []
    for coords in itertools.product(*_chunk_ranges(arr, index)):
        try:
            arr[_chunk_slices(arr, coords)]
        except Exception:  # noqa: BLE001 - each failing chunk is named
            bad.append(arr.metadata.encode_chunk_key(coords))
    return bad


def check_finite(data: np.ndarray, source: str, policy: str = "error", where: str = "") -> np.ndarray:
    """NaN/Inf pixels: error (raise `BadData`, policy "error" or "skip" -- the caller skips), or zero them."""
    if data.dtype.kind != "f":
        return data
    finite = np.isfinite(data)
    if finite.all():
        return data
    if policy == "zero":
        return np.where(finite, data, 0).astype(data.dtype)
    n = int((~finite).sum())
    hint = (
        "set --nan-policy zero to replace them by 0 or skip to leave the item out"
        if policy == "error"
        else ""
    )
    raise BadData(
        "non_finite",
        source,
        "",
        [],
        f"{n} NaN/Inf pixels{f' in {where}' if where else ''}; {hint}".rstrip("; "),
    )


def decide(err: BaseException, on_bad_data: str, nan_policy: str) -> bool:
    """True when `err` is to be skipped (counted, logged) under the policies; False: re-raise it."""
    if isinstance(err, BadData) and err.kind == "non_finite":
        return nan_policy == "skip"
    return on_bad_data == "skip"


def append_record(path: str | None, record: dict[str, Any]) -> None:
    """Add one bad-data record to a JSON-lines log (one write per line; shared by processes)."""
    if not path:
        return
    import json

    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    except OSError as err:  # a log line must not end training; the count is still in the warning
        log.warning("%s: cannot record bad data (%s)", path, err)
    finally:
        os.close(fd)


def summarize(path: str | os.PathLike) -> str | None:
    """One line on what a bad-data log holds (distinct items by kind), or None when empty."""
    import json
    from collections import Counter
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        return None
    seen = set()
    for line in p.read_text(errors="replace").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        seen.add((r.get("kind"), r.get("source"), r.get("array"), r.get("chunks"), r.get("item", "")))
    if not seen:
        return None
    kinds = Counter(k for k, *_ in seen)
    sources = sorted({s for _, s, *_ in seen})
    return (f"skipped {len(seen)} items with bad data ({dict(kinds)}) in {len(sources)} fields, e.g. "
            f"{sources[:3]}; details in {p}")  # fmt: skip
