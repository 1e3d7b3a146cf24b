"""Several crop windows of one field read with each stored chunk decoded once.

The crops of a sampling group come from one field and often share chunks (a 320 px window on
256 px chunks touches 4 to 9 of them). Reading the windows one by one decodes the shared chunks
again; reading their bounding box decodes chunks no window needs. `read_windows` reads the exact
union of the chunks the windows touch, as a few chunk-aligned rectangles, and cuts the windows out
of them: decoding (the dominant host cost, e.g. zstd + bit-shuffle) drops to the union.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Rect = tuple[int, int, int, int]  # (y, x, h, w)


def _chunk_range(start: int, size: int, chunk: int) -> range:
    return range(start // chunk, (start + size - 1) // chunk + 1)


def chunks_touched(windows: list[tuple[int, int]], crop: int, chunks: tuple[int, int]) -> list[set]:
    """For each window at (y, x) of `crop` px, the set of (chunk row, chunk column) it needs."""
    cy, cx = chunks
    return [
        {(r, k) for r in _chunk_range(y, crop, cy) for k in _chunk_range(x, crop, cx)} for y, x in windows
    ]


def union_rects(needed: set, chunks: tuple[int, int], shape: tuple[int, int]) -> list[Rect]:
    """Chunk-aligned rectangles (clipped to the image of `shape`) covering exactly the chunks in
    `needed`: runs of consecutive chunk columns per chunk row, merged down rows with the same run."""
    cy, cx = chunks
    h, w = shape
    runs: dict[tuple[int, int], list[int]] = {}  # (first col, last col) -> chunk rows
    for r in sorted({r for r, _ in needed}):
        cols = sorted(k for rr, k in needed if rr == r)
        start = prev = cols[0]
        for col in [*cols[1:], None]:
            if col is not None and col == prev + 1:
                prev = col
                continue
            runs.setdefault((start, prev), []).append(r)
            if col is not None:
                start = prev = col
    rects = []
    for (c0, c1), rows in runs.items():
        top = rows[0]
        for i, r in enumerate(rows):
            if i + 1 == len(rows) or rows[i + 1] != r + 1:  # end of a block of consecutive rows
                y0, x0 = top * cy, c0 * cx
                rects.append((y0, x0, min((r + 1) * cy, h) - y0, min((c1 + 1) * cx, w) - x0))
                if i + 1 < len(rows):
                    top = rows[i + 1]
    return rects


def cut(pieces: list[tuple[Rect, np.ndarray]], y: int, x: int, crop: int) -> np.ndarray:
    """The (C, crop, crop) window at (y, x) assembled from chunk-aligned pieces that cover it."""
    first = pieces[0][1]
    out = np.empty((first.shape[0], crop, crop), dtype=first.dtype)
    covered = 0
    for (py, px, ph, pw), data in pieces:
        y0, y1 = max(y, py), min(y + crop, py + ph)
        x0, x1 = max(x, px), min(x + crop, px + pw)
        if y0 < y1 and x0 < x1:
            out[:, y0 - y : y1 - y, x0 - x : x1 - x] = data[:, y0 - py : y1 - py, x0 - px : x1 - px]
            covered += (y1 - y0) * (x1 - x0)
    if covered != crop * crop:  # the rectangles are disjoint: anything else is a bug here
        raise RuntimeError(f"window y={y} x={x} of {crop} px is not covered by the chunk rectangles")
    return out


def read_windows(image: Any, windows: list[tuple[int, int]], crop: int) -> list[np.ndarray] | None:
    """The (C, crop, crop) windows at `windows` of `image` (a `cellfm.data.stores.Image`), reading
    the union of their chunks once; None when they share no chunk (read them one by one)."""
    chunks = image.chunks_yx
    touched = chunks_touched(windows, crop, chunks)
    needed = set().union(*touched)
    if len(needed) == sum(len(t) for t in touched):
        return None
    _, h, w = image.shape
    pieces = [(r, image.read(*r)) for r in union_rects(needed, chunks, (h, w))]
    return [cut(pieces, y, x, crop) for y, x in windows]
