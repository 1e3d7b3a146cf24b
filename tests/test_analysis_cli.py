"""`cellfm analyze` end to end on a freshly embedded plate: obsm normalisations, leiden, UMAP, wells,
metrics and PNG plots (one scanpy neighbours call: numba compiles once)."""

import json

import anndata as ad
import numpy as np
import pytest

from cellfm.cli import main
from cellfm.embed import run_embed
from tests.test_embed_api import make_plate, save_tiny

WELLS = {"A/1": "DMSO", "A/2": "DMSO", "A/3": "drugX", "A/4": "drugX", "B/1": "drugY", "B/2": "drugY"}


def test_analyze_command(tmp_path, capsys):
    store = make_plate(tmp_path / "P.ome.zarr", wells={w: ["0"] for w in WELLS}, labels=False)
    csv = tmp_path / "wells.csv"
    csv.write_text("well,treatment,control\n" + "".join(f"{w},{t},{t == 'DMSO'}\n" for w, t in WELLS.items()))
    model = save_tiny(tmp_path / "m.safetensors")
    out = run_embed(store, str(model), tmp_path / "emb.h5ad", level="tile", tile_size=16, overlap=0,
                    metadata=csv, patch_features=tmp_path / "pf.zarr")  # fmt: skip
    plots = tmp_path / "plots"
    rc = main(["analyze", str(out), "--plots", str(plots), "--label", "treatment", "--n-neighbors", "5"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "leiden clusters on X_standardize" in printed and "6 wells" in printed
    rows = ad.read_h5ad(tmp_path / "emb.analyzed.h5ad")
    assert {"X_standardize", "X_mad", "X_sphering", "X_tvn", "X_umap", "spatial"} <= set(rows.obsm)
    assert "leiden" in rows.obs and rows.obsm["X_umap"].shape == (rows.n_obs, 2)
    ctrl = rows.obs["control"].to_numpy(bool)
    np.testing.assert_allclose(rows.obsm["X_standardize"][ctrl].mean(0), 0, atol=1e-4)
    wells = ad.read_h5ad(tmp_path / "emb.wells.h5ad")
    assert wells.n_obs == 6 and list(wells.obs["n_rows"]) == [rows.n_obs // 6] * 6
    assert list(wells.obs["treatment"]) == list(WELLS.values())
    report = json.loads((tmp_path / "emb.metrics.json").read_text())
    assert 0 <= report["knn_accuracy"] <= 1 and 0 <= report["linear_probe_accuracy"] <= 1
    assert set(report["phenotypic_activity"]) == {"drugX", "drugY"}
    names = {p.name for p in plots.iterdir()}
    assert {"umap_well.png", "umap_treatment.png", "umap_plate.png", "umap_leiden.png"} <= names
    assert len([n for n in names if n.startswith("patch_pca_")]) == 6
    import matplotlib.image

    assert matplotlib.image.imread(plots / "umap_well.png").ndim == 3
    rc = main(["analyze", str(out), "-o", str(tmp_path / "res.h5ad"), "--normalize", "standardize",
               "--n-neighbors", "5"])  # fmt: skip
    assert rc == 0 and "X_standardize" in ad.read_h5ad(tmp_path / "res.h5ad").obsm
    assert (tmp_path / "res.wells.h5ad").is_file() and (tmp_path / "res.metrics.json").is_file()
    rc = main(["analyze", str(out), "--controls", "treatment=PBS"])
    assert rc == 1 and "no row has treatment == 'PBS'" in capsys.readouterr().err
    rc = main(["analyze", str(tmp_path / "missing.h5ad")])
    assert rc == 1 and "missing.h5ad: no such AnnData file" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["nothing"])
def test_cluster_rejects_unknown_representation(bad):
    from cellfm.analysis import cluster

    a = ad.AnnData(np.zeros((5, 2), np.float32))
    with pytest.raises(KeyError, match=f"no representation '{bad}'"):
        cluster(a, bad)
