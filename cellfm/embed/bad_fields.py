"""Fields left out of an embedding for damaged or non-finite data: never embedded as zeros or NaN.

A skipped field adds no rows and one row to `uns["cellfm"]["skipped"]` (source, array, kind, chunk
keys, detail). The whole field is skipped, not only the cells over a bad chunk: the ViT mixes every
patch of a tile through attention, so a hole changes the features of cells far from it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from cellfm.data.checked_read import BadData

from .fields import FieldResult

log = logging.getLogger(__name__)
SKIPPED_COLUMNS = ("source", "array", "kind", "chunks", "detail")


class SkippedField:
    """Stands in for a `FieldTask` whose data could not be read: nothing to encode, an empty result."""

    def __init__(self, index: int, err: BadData, level: str):
        self.index, self.err, self.level = index, err, level
        self.items: list = []
        self.pending = 0
        log.warning("skipping field %s (no rows): %s", err.source, err)

    def finish(self, num_features: int) -> FieldResult:
        empty = np.zeros(0, np.float32)
        cols = {"y": empty, "x": empty, "cell_id": np.array([], dtype=str)}
        if self.level == "tile":
            cols["tile"] = np.zeros(0, np.int64)
        if self.level == "cell":
            cols["area"] = np.zeros(0, np.int64)
        return FieldResult(
            self.index, np.zeros((0, num_features), np.float32), cols, skipped=self.err.record()
        )


def skipped_table(records: list[dict[str, Any] | None]) -> dict[str, np.ndarray]:
    """`uns["cellfm"]["skipped"]`: one entry per skipped field, as string columns (h5ad/zarr-safe)."""
    rows = [r for r in records if r]
    if rows:
        log.warning("%d fields were skipped for damaged or non-finite data (see uns['cellfm']['skipped']): %s",
                    len(rows), [r["source"] for r in rows[:5]])  # fmt: skip
    return {c: np.array([str(r.get(c, "")) for r in rows], dtype=object) for c in SKIPPED_COLUMNS}
