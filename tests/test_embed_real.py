"""The bar on real data: the held-out nuclei sample with its real masks gives one row per nucleus."""

import anndata as ad
import numpy as np

from cellfm.checkpoints import save_backbone
from cellfm.data.samples import heldout_nuclei
from cellfm.data.writer import create_plate, with_version, write_image
from cellfm.embed import run_embed
from cellfm.models import VisionTransformer, ViTArch

SLICES = (20, 30, 40)


def test_real_nuclei_one_row_per_labelled_nucleus(tmp_path):
    import scanpy as sc

    stack, labels = heldout_nuclei()
    wells = {f"A/{i + 1}": ["0"] for i in range(len(SLICES))}
    root = create_plate(str(tmp_path / "nuclei.ome.zarr"), "nuclei", wells, "0.4")
    expected = []
    for (well, _), z in zip(wells.items(), SLICES):
        grp = root[well].require_group("0")
        write_image(grp, stack[z][None], ["DNA"], "0.4", chunk=128, min_level_size=256)
        lg = grp.require_group("labels")
        lg.attrs.update(with_version("0.4", {"labels": ["nuclei"]}))
        write_image(
            lg.require_group("nuclei"), labels[z][None], ["nuclei"], "0.4", chunk=128, min_level_size=256
        )
        expected += [(well.replace("/", ""), str(v)) for v in np.unique(labels[z]) if v]
    model = VisionTransformer(
        ViTArch(embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=64, in_chans=1)
    )
    path = save_backbone(model, tmp_path / "tiny.safetensors", channel_names=["DNA"])
    out = run_embed(str(tmp_path / "nuclei.ome.zarr"), str(path), tmp_path / "cells.h5ad", level="cell",
                    labels="nuclei", tile_size=128, overlap=16)  # fmt: skip
    adata = ad.read_h5ad(out)
    assert list(zip(adata.obs["well"], adata.obs["cell_id"])) == expected
    assert adata.X.dtype == np.float32 and np.isfinite(adata.X).all()
    assert (adata.obs["area"] >= 1).all() and adata.obs_names.is_unique
    sc.pp.neighbors(adata, use_rep="X", n_neighbors=5)
    assert adata.obsp["connectivities"].shape == (len(expected), len(expected))
