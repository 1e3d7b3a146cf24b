"""`cellfm export-profiles`: the cytomining table that pycytominer (aggregate, normalize, feature_select)
and copairs consume as they are, from an embedded plate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellfm.analysis.profiles import cytomining_well, profile_table
from cellfm.cli import main
from cellfm.embed import run_embed
from tests.test_embed_api import make_plate, save_tiny

WELLS = {"A/1": "DMSO", "A/2": "DMSO", "A/3": "drugX", "A/4": "drugX", "B/1": "drugY", "B/2": "drugY"}


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("profiles")
    store = make_plate(tmp / "P7.ome.zarr", wells={w: ["0", "1"] for w in WELLS}, labels=False)
    csv = tmp / "wells.csv"
    csv.write_text("well,treatment,control\n" + "".join(f"{w},{t},{t == 'DMSO'}\n" for w, t in WELLS.items()))
    out = run_embed(store, str(save_tiny(tmp / "m.safetensors")), tmp / "emb.h5ad", level="tile", tile_size=16,
                    overlap=0, metadata=csv)  # fmt: skip
    return tmp, out


def test_export_profiles_cell_and_well_parquet_csv(embedded, capsys):
    import anndata as ad

    tmp, h5ad = embedded
    adata = ad.read_h5ad(h5ad)
    assert main(["export-profiles", str(h5ad), "-o", str(tmp / "cells.parquet")]) == 0
    assert f"{adata.n_obs} cell profiles" in capsys.readouterr().out
    cells = pd.read_parquet(tmp / "cells.parquet")
    assert list(cells.columns[:3]) == ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    meta = [c for c in cells.columns if c.startswith("Metadata_")]
    assert cells.columns[: len(meta)].tolist() == meta  # metadata first, then features only
    assert {f"Metadata_{c}" for c in adata.obs.columns if c not in ("plate", "well", "field")} <= set(meta)
    assert cells.columns[len(meta) :].tolist() == list(adata.var_names)
    np.testing.assert_allclose(cells[list(adata.var_names)].to_numpy(), adata.X, rtol=1e-6)
    assert set(cells["Metadata_Well"]) == {"A01", "A02", "A03", "A04", "B01", "B02"}
    assert set(cells["Metadata_Plate"]) == {"P7"} and set(cells["Metadata_Site"]) == {"0", "1"}
    assert main(["export-profiles", str(h5ad), "-o", str(tmp / "wells.csv"), "--level", "well"]) == 0
    wells = pd.read_csv(tmp / "wells.csv")
    assert len(wells) == 6 and "Metadata_Site" not in wells and "Metadata_treatment" in wells
    got = wells.set_index("Metadata_Well").loc["A03", list(adata.var_names)].to_numpy(float)
    want = adata.X[(adata.obs["well"] == "A3").to_numpy()].mean(0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert main(["export-profiles", str(h5ad), "-o", str(tmp / "x.xlsx")]) == 1
    assert "profiles are written as .parquet" in capsys.readouterr().err


def test_pycytominer_and_copairs_consume_the_table(embedded):
    import anndata as ad
    from copairs.map import average_precision
    from pycytominer import aggregate, feature_select, normalize

    tmp, h5ad = embedded
    cells = profile_table(ad.read_h5ad(h5ad), "cell", feature_prefix="Cells_")
    # pycytominer's defaults infer features (Cells_ prefix) and metadata (Metadata_ prefix) by name
    wells = aggregate(cells, strata=["Metadata_Plate", "Metadata_Well"], features="infer", operation="median")
    assert len(wells) == 6 and wells.filter(like="Cells_").shape[1] == cells.filter(like="Cells_").shape[1]
    wells = wells.merge(cells.groupby("Metadata_Well")[["Metadata_treatment"]].first(), on="Metadata_Well")
    normed = normalize(wells, features="infer", meta_features="infer",
                       samples="Metadata_treatment == 'DMSO'", method="standardize")  # fmt: skip
    dmso = normed[normed["Metadata_treatment"] == "DMSO"].filter(like="Cells_")
    np.testing.assert_allclose(dmso.mean().to_numpy(), 0, atol=1e-6)
    selected = feature_select(
        normed, features="infer", operation=["variance_threshold", "correlation_threshold"]
    )
    kept = selected.filter(like="Cells_").shape[1]
    assert 0 < kept <= dmso.shape[1] and "Metadata_treatment" in selected
    meta = selected.filter(like="Metadata_").reset_index(drop=True)
    ap = average_precision(meta, selected.filter(like="Cells_").to_numpy(), pos_sameby=["Metadata_treatment"],
                           pos_diffby=[], neg_sameby=[], neg_diffby=["Metadata_treatment"], progress_bar=False)  # fmt: skip
    assert len(ap) == 6 and ap["average_precision"].between(0, 1).all()


def test_profile_table_rules():
    assert [cytomining_well(w) for w in ("A1", "p24", "B07", "odd")] == ["A01", "P24", "B07", "odd"]
    import anndata as ad

    a = ad.AnnData(np.ones((2, 2), np.float32), obs=pd.DataFrame({"plate": ["p", "p"], "well": ["A1", "B2"]}))
    a.var_names = ["Metadata_x", "f"]
    a.obs["x"] = [1, 2]
    with pytest.raises(ValueError, match="Metadata_x"):
        profile_table(a)
    with pytest.raises(KeyError, match="Metadata_Plate"):
        profile_table(ad.AnnData(np.ones((1, 1)), obs=pd.DataFrame({"well": ["A1"]})))
