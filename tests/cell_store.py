"""A store of cells for the search tests: one 256 px quadrant of stardist's real nuclei image with its
mask, embedded at cell level (mask-pooled rows) with the shipped model."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_cell_store(root: Path):
    """(store .h5ad, image, mask, AnnData) under `root`."""
    from stardist.data import test_image_nuclei_2d

    from cellfm.data.ngff_labels import write_labels
    from cellfm.data.writer import create_plate, write_image
    from cellfm.embed import embed

    img, mask = test_image_nuclei_2d(return_mask=True)
    img, mask = img[:256, :256], mask[:256, :256].astype(np.uint32)
    plate = create_plate(str(root / "p.ome.zarr"), "cells", {"A/1": ["0"]}, "0.4", mode="w")
    field = plate["A/1"].require_group("0")
    write_image(field, img[None], ["DNA"], "0.4", chunk=128, min_level_size=256)
    write_labels(field, mask, "nuclei", "0.4")
    out = root / "cells.h5ad"
    adata = embed(str(root / "p.ome.zarr"), output=out, level="cell", labels="nuclei", min_area=80)
    return out, img, mask, adata


def centroid(mask: np.ndarray, value: int) -> tuple[float, float]:
    ys, xs = np.nonzero(mask == value)
    return float(ys.mean()), float(xs.mean())
