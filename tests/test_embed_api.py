"""cellfm.embed: levels, pooling, AnnData layout, Bag-of-Channels, patch features, bad input."""

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from cellfm.transforms import Normalize

from cellfm.checkpoints import save_backbone
from cellfm.data.writer import create_plate, with_version, write_image
from cellfm.embed import EmbedConfig, embed, patch_anndata, read_patch_map, run_embed, tile_grid
from cellfm.embed.pooling import find_objects, pool_objects
from cellfm.embed.tiling import tile_starts
from cellfm.models import BagOfChannels, VisionTransformer, ViTArch

CHANNELS = ["DNA", "RNA"]


def tiny_model(in_chans=2, seed=0):
    torch.manual_seed(seed)
    return VisionTransformer(
        ViTArch(embed_dim=16, depth=1, num_heads=2, patch_size=8, img_size=32, in_chans=in_chans)
    )


def save_tiny(path, in_chans=2, names=CHANNELS, bag=False):
    model = tiny_model(1 if bag else in_chans)
    if bag:
        model = BagOfChannels(
            VisionTransformer(ViTArch(**{**model.arch.to_dict(), "channel_strategy": "bag_of_channels"}))
        )
    return save_backbone(model, path, channel_names=None if bag else names)


def field_image(seed, size=(40, 48), n_channels=2):
    rng = np.random.default_rng(seed)
    return rng.integers(100, 4000, size=(n_channels, *size)).astype(np.uint16)


def cell_labels(size=(40, 48)):
    lab = np.zeros((1, *size), dtype=np.uint16)
    lab[0, 2:10, 3:15] = 4  # ids need not be consecutive
    lab[0, 20:36, 20:40] = 11
    return lab


def make_plate(path, wells=None, size=(40, 48), names=CHANNELS, labels=True, label_size=None, seed=0):
    """A small OME-Zarr plate; fields get uint16 noise and (optionally) a 'nuclei' labels image."""
    wells = wells or {"A/1": ["0", "1"], "A/2": ["0"], "B/1": ["0"]}
    root = create_plate(str(path), path.name.split(".")[0], wells, "0.4")
    k = seed
    for well, fields in wells.items():
        for f in fields:
            grp = root[well].require_group(f)
            write_image(
                grp, field_image(k, size, len(names)), list(names), "0.4", chunk=64, min_level_size=512
            )
            k += 1
            if labels:
                lg = grp.require_group("labels")
                lg.attrs.update(with_version("0.4", {"labels": ["nuclei"]}))
                write_image(
                    lg.require_group("nuclei"),
                    cell_labels(label_size or size),
                    ["nuclei"],
                    "0.4",
                    chunk=64,
                    min_level_size=512,
                )
    return str(path)


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    return make_plate(tmp_path_factory.mktemp("plate") / "P1.ome.zarr")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return str(save_tiny(tmp_path_factory.mktemp("model") / "tiny.safetensors"))


def reference_field(plate, well, field, model_path, tile=None):
    """The field normalised as embed does, and the model's outputs on it (no tiling)."""
    import zarr

    from cellfm.checkpoints import load_backbone

    raw = zarr.open_group(plate, mode="r")[f"{well}/{field}/0"][0, :, 0]
    x = Normalize("percentile")(torch.from_numpy(raw.astype(np.int32))[None])
    x = torch.nn.functional.pad(x, (0, (-x.shape[-1]) % 8, 0, (-x.shape[-2]) % 8))
    x = Normalize("zscore", eps=0.01)(x)
    model = load_backbone(model_path).eval()
    with torch.no_grad():
        return model.forward_features(x)


def test_tiles_cover_the_field_on_the_patch_grid():
    assert tile_starts(40, 64, 16) == [0]
    assert tile_starts(200, 64, 16) == [0, 48, 96, 136]
    windows = tile_grid(104, 200, 64, 16)
    cover = np.zeros((104, 200), int)
    for y, x, h, w in windows:
        assert y % 8 == 0 and x % 8 == 0 and (h, w) == (64, 64)
        cover[y : y + h, x : x + w] += 1
    assert cover.min() >= 1 and cover.max() >= 2  # overlapping, nothing missed


def test_field_level_layout_and_values(plate, model_path, tmp_path):
    adata = embed(plate, model_path, tmp_path / "f.h5ad")
    assert adata.shape == (4, 16) and adata.X.dtype == np.float32
    for col in ("plate", "well", "row", "column", "field", "cell_id", "source"):
        assert isinstance(adata.obs[col].dtype, pd.CategoricalDtype), col
    assert list(adata.obs["well"]) == ["A1", "A1", "A2", "B1"]
    assert list(adata.obs["row"]) == ["A", "A", "A", "B"] and list(adata.obs["column"]) == [
        "1",
        "1",
        "2",
        "1",
    ]
    assert list(adata.var_names[:2]) == ["f00", "f01"] and set(adata.var["channel"]) == {"all"}
    assert adata.obsm["spatial"].shape == (4, 2)
    prov = adata.uns["cellfm"]
    from cellfm.checkpoints import file_sha256

    assert prov["checkpoint_sha256"] == file_sha256(model_path)
    assert prov["level"] == "field" and prov["pooling"] == "cls" and list(prov["channels"]) == CHANNELS
    assert prov["architecture"]["embed_dim"] == 16 and prov["normalization"]["input"]["mode"] == "percentile"
    assert {"torch", "anndata", "cellfm"} <= set(prov["versions"])
    # the field fits one tile: its row is the model's CLS token on the normalised field
    ref = reference_field(plate, "A/2", "0", model_path)["x_norm_clstoken"][0].numpy()
    np.testing.assert_allclose(adata.X[2], ref, rtol=1e-4, atol=1e-5)
    assert not (tmp_path / "f.h5ad.parts").exists()


def test_tiled_mean_pooling_equals_single_pass_where_tiles_cannot_differ(plate, model_path, tmp_path):
    # tiles of the whole padded field: mean pooling over the stitched map is the mean patch token
    one = embed(plate, model_path, level="field", pooling="mean", tile_size=64)
    ref = reference_field(plate, "A/1", "0", model_path)["x_norm_patchtokens"][0].mean(0).numpy()
    np.testing.assert_allclose(one.X[0], ref, rtol=1e-4, atol=1e-5)
    tiles = embed(plate, model_path, tmp_path / "t.zarr", level="tile", tile_size=24, overlap=8)
    assert tiles.n_obs == 4 * len(tile_grid(40, 48, 24, 8)) and tiles.X.shape == (tiles.n_obs, 16)
    assert np.isfinite(tiles.X).all() and tiles.X.std() > 0
    assert tiles.obs["tile"].max() == len(tile_grid(40, 48, 24, 8)) - 1
    assert (tiles.obsm["spatial"][:, 0] <= 48).all() and (tiles.obsm["spatial"][:, 1] <= 40).all()


def test_mask_pooling_hand_computed():
    labels = np.zeros((4, 4), int)
    labels[0, 0] = 5  # one pixel in patch (0, 0)
    labels[1:3, 1:3] = 2  # one pixel in each of the four 2x2 patches
    labels[0, 2:4] = 7  # two pixels in patch (0, 1)
    pmap = np.arange(4 * 3, dtype=np.float32).reshape(2, 2, 3)  # (gh, gw, F)
    obj = find_objects(labels)
    assert obj.ids.tolist() == [2, 5, 7] and obj.area.tolist() == [4, 1, 2]
    pooled = pool_objects(pmap, obj, patch=2)
    np.testing.assert_allclose(pooled[0], pmap.reshape(4, 3).mean(0))
    np.testing.assert_allclose(pooled[1], pmap[0, 0])
    np.testing.assert_allclose(pooled[2], pmap[0, 1])
    bil = pool_objects(pmap, obj, patch=2, mode="mask_bilinear")
    # pixel (0, 0) lies before the first patch centre: clamped to patch (0, 0)
    np.testing.assert_allclose(bil[1], pmap[0, 0])
    # the 2x2 object sits symmetrically around the centre of the 2x2 grid
    np.testing.assert_allclose(bil[0], pmap.reshape(4, 3).mean(0), rtol=1e-6)


def test_cell_level_rows_match_labels(plate, model_path, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    cells = embed(
        plate,
        model_path,
        tmp_path / "c.h5ad",
        level="cell",
        labels="nuclei",
        patch_features=tmp_path / "pf.zarr",
    )
    assert cells.n_obs == 8 and list(cells.obs["cell_id"][:2]) == ["4", "11"]
    assert list(cells.obs["area"][:2]) == [8 * 12, 16 * 20]
    np.testing.assert_allclose(cells.obsm["spatial"][0], [3 + 5.5, 2 + 3.5])
    # row = area-weighted patch features of the stitched map in the patch store
    feats, ys, xs, info = read_patch_map(tmp_path / "pf.zarr", 0)
    assert feats.shape == (5, 6, 16) and info["well"] == "A1" and ys[0] == 4.0 and xs[-1] == 44.0
    obj = find_objects(cell_labels()[0].astype(int))
    np.testing.assert_allclose(cells.X[:2], pool_objects(feats, obj, 8), rtol=1e-5, atol=1e-6)
    ref = reference_field(plate, "A/1", "0", model_path)["x_norm_patchtokens"][0].reshape(5, 6, 16).numpy()
    np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-5)
    patches = patch_anndata(tmp_path / "pf.zarr", stride=2)
    assert patches.n_obs == 4 * 3 * 3 and patches.n_vars == 16
    assert set(patches.obs["well"]) == {"A1", "A2", "B1"}
    crops = embed(plate, model_path, level="cell", pooling="crop", crop_size=16)
    assert crops.n_obs == 8 and not np.allclose(crops.X, cells.X)


def test_tiny_objects_warn_or_drop(tmp_path, model_path, caplog):
    path = tmp_path / "S.ome.zarr"
    make_plate(path, wells={"A/1": ["0"]})
    import zarr

    arr = zarr.open_group(str(path), mode="r+")["A/1/0/labels/nuclei/0"]
    lab = arr[...]
    lab[0, 0, 0, 39, 47] = 99
    arr[...] = lab
    with caplog.at_level(logging.WARNING):
        kept = embed(str(path), model_path, level="cell")
    assert "objects of one pixel (labels [99])" in caplog.text and kept.n_obs == 3
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        dropped = embed(str(path), model_path, level="cell", min_area=2)
    assert "dropping 1 objects smaller than 2 pixels (labels [99])" in caplog.text
    assert list(dropped.obs["cell_id"]) == ["4", "11"]


def test_bag_of_channels_vectors_per_channel(plate, tmp_path):
    path = save_tiny(tmp_path / "boc.safetensors", bag=True)
    both = embed(plate, str(path), channels=["DNA", "RNA"])
    assert both.n_vars == 32 and both.var_names[0] == "DNA_f00" and both.var_names[16] == "RNA_f00"
    assert list(both.var["channel"].cat.categories) == ["DNA", "RNA"]
    swapped = embed(plate, str(path), channels=["RNA", "DNA"])
    np.testing.assert_allclose(swapped.X[:, :16], both.X[:, 16:], rtol=1e-5, atol=1e-6)
    only = embed(plate, str(path), channels=["RNA"])
    np.testing.assert_allclose(only.X, both.X[:, 16:], rtol=1e-5, atol=1e-6)


def test_metadata_csv_joins_onto_obs(plate, model_path, tmp_path):
    csv = tmp_path / "wells.csv"
    csv.write_text(
        "well,treatment,concentration,control\nA01,DMSO,0,true\nA02,drugX,1.5,false\nB1,drugX,3,no\n"
    )
    adata = embed(plate, model_path, metadata=csv)
    assert list(adata.obs["treatment"]) == ["DMSO", "DMSO", "drugX", "drugX"]
    assert adata.obs["concentration"].tolist() == [0, 0, 1.5, 3.0]
    assert adata.obs["control"].tolist() == [True, True, False, False]


def test_bad_input_errors_leave_no_output(plate, model_path, tmp_path):
    out = tmp_path / "bad.h5ad"
    csv = tmp_path / "w.csv"
    csv.write_text("well,treatment\nA1,DMSO\nA2,x\n")
    with pytest.raises(KeyError, match=r"w.csv: no metadata row for wells \['B1'\]"):
        run_embed(plate, model_path, out, metadata=csv)
    three = save_tiny(tmp_path / "three.safetensors", in_chans=3, names=["a", "b", "c"])
    with pytest.raises(
        ValueError, match=r"three.safetensors expects 3 channels .* store .*P1.ome.zarr gives 2"
    ):
        run_embed(plate, str(three), out)
    bad = make_plate(tmp_path / "L.ome.zarr", wells={"A/1": ["0"]}, label_size=(40, 40))
    with pytest.raises(ValueError, match=r"labels .*A/1/0/labels/nuclei has shape \(1, 40, 40\) but image"):
        run_embed(bad, model_path, out, level="cell")
    with pytest.raises(KeyError, match="no label image 'cells'"):
        run_embed(plate, model_path, out, level="cell", labels="cells")
    with pytest.raises(ValueError, match="pooling 'mask' does not apply to level 'field'"):
        EmbedConfig(level="field", pooling="mask")
    with pytest.raises(ValueError, match="must end in .h5ad or .zarr"):
        run_embed(plate, model_path, tmp_path / "x.csv")
    assert not out.exists() and not list(tmp_path.glob("*.parts"))


def test_empty_well_and_fields_without_objects(tmp_path, model_path, caplog):
    path = tmp_path / "E.ome.zarr"
    make_plate(path, wells={"A/1": ["0"], "A/2": ["0"]})
    import zarr

    root = zarr.open_group(str(path), mode="r+")
    root["A/2/0/labels/nuclei/0"][...] = 0  # a field without objects
    root.require_group("B").require_group("3").attrs.update(with_version("0.4", {"well": {"images": []}}))
    plate_attrs = dict(root.attrs)
    plate_attrs["plate"]["wells"].append({"path": "B/3", "rowIndex": 1, "columnIndex": 2})
    plate_attrs["plate"]["rows"].append({"name": "B"})
    plate_attrs["plate"]["columns"].append({"name": "3"})
    root.attrs.update(plate_attrs)
    with caplog.at_level(logging.WARNING):
        adata = embed(str(path), model_path, tmp_path / "e.h5ad", level="cell")
    assert adata.n_obs == 2 and set(adata.obs["well"]) == {"A1"}
    assert list(adata.uns["cellfm"]["empty_wells"]) == ["E/A2", "E/B3"]
    assert "no objects in labels image" in caplog.text and "well E/B3 gave no rows" in caplog.text
    root["A/1/0/labels/nuclei/0"][...] = 0
    with pytest.raises(ValueError, match="no rows to write"):
        run_embed(str(path), model_path, tmp_path / "none.h5ad", level="cell")
    assert not (tmp_path / "none.h5ad").exists()


def test_resume_refuses_other_settings(plate, model_path, tmp_path):
    out = tmp_path / "r.h5ad"
    from cellfm.embed.rowstore import RowStore

    RowStore(f"{out}.parts").open({"config": {"level": "tile"}})
    with pytest.raises(ValueError, match="holds a partial job with other settings"):
        run_embed(plate, model_path, out)
    run_embed(plate, model_path, out, overwrite=True)
    assert ad.read_h5ad(out).n_obs == 4
    with pytest.raises(ValueError, match="already exists"):
        run_embed(plate, model_path, out)
