"""Search a store of cells (`embed --level cell`, mask-pooled rows) with a clicked cell of a query image:
the query's cell is pooled the same way, so a rotated copy of the field finds the clicked cell first."""

from __future__ import annotations

import numpy as np
import pytest

from cellfm.curate import search
from tests.cell_store import centroid

# `cell_store`: the session fixture in conftest.py (shared with the napari search widget's test).


def test_a_rotated_field_finds_the_clicked_cell_first(cell_store):
    out, img, mask, adata = cell_store
    ids = adata.obs["cell_id"].astype(str).tolist()
    chosen = [ids[i] for i in np.linspace(0, len(ids) - 1, 4).astype(int)]
    rot_img, rot_mask = np.rot90(img).copy(), np.rot90(mask).copy()
    for cid in chosen:
        at = centroid(rot_mask, int(cid))
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
