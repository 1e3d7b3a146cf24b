"""Search a store of cells (`embed --level cell`, mask-pooled rows) with a clicked cell of a query image:
the query's cell is pooled the same way, so a rotated copy of the field finds the clicked cell first."""

from __future__ import annotations

import numpy as np
import pytest

from cellfm.curate import search


@pytest.fixture(scope="module")
def cell_store(tmp_path_factory):
    from stardist.data import test_image_nuclei_2d

    from cellfm.data.ngff_labels import write_labels
    from cellfm.data.writer import create_plate, write_image
    from cellfm.embed import embed

    img, mask = test_image_nuclei_2d(return_mask=True)
    img, mask = img[:256, :256], mask[:256, :256].astype(np.uint32)
    root = tmp_path_factory.mktemp("cells")
    plate = create_plate(str(root / "p.ome.zarr"), "cells", {"A/1": ["0"]}, "0.4", mode="w")
    field = plate["A/1"].require_group("0")
    write_image(field, img[None], ["DNA"], "0.4", chunk=128, min_level_size=256)
    write_labels(field, mask, "nuclei", "0.4")
    out = root / "cells.h5ad"
    adata = embed(str(root / "p.ome.zarr"), output=out, level="cell", labels="nuclei", min_area=80)
    return out, img, mask, adata


def _centroid(mask, value):
    ys, xs = np.nonzero(mask == value)
    return float(ys.mean()), float(xs.mean())


def test_a_rotated_field_finds_the_clicked_cell_first(cell_store):
    out, img, mask, adata = cell_store
    ids = adata.obs["cell_id"].astype(str).tolist()
    chosen = [ids[i] for i in np.linspace(0, len(ids) - 1, 4).astype(int)]
    rot_img, rot_mask = np.rot90(img).copy(), np.rot90(mask).copy()
    for cid in chosen:
        at = _centroid(rot_mask, int(cid))
        result = search(out, rot_img, k=3, at=at, query_labels=rot_mask)
        assert result.iloc[0]["cell_id"] == cid, (cid, result[["cell_id", "score"]].values.tolist())


def test_cell_store_queries_need_a_cell(cell_store):
    out, img, mask, _ = cell_store
    with pytest.raises(ValueError, match="holds cells: give the query cell's position"):
        search(out, img, k=3)
    with pytest.raises(ValueError, match="give the query's labels"):
        search(out, img, k=3, at=(10, 10))
    y, x = np.argwhere(mask == 0)[0]
    with pytest.raises(ValueError, match=r"query labels are 0 \(no cell\)"):
        search(out, img, k=3, at=(y, x), query_labels=mask)
    with pytest.raises(ValueError, match="outside the 256x256 image"):
        search(out, img, k=3, at=(300, 5))
    with pytest.raises(ValueError, match="expected the image's"):
        search(out, img, k=3, at=(10, 10), query_labels=mask[:10])
