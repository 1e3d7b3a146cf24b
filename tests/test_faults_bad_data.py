"""Fault injection, damaged data: missing / garbage / truncated chunks and NaN pixels in every read path
(fields, pyramid levels for foreground masks, labels) are counted and named, never silently embedded
(audit items 2, 3, 7)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from cellfm.embed import embed, run_embed
from tests.fault_data import chunk_file, convert, converted_plate, tiff_folder, tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture
def plate(tmp_path):
    return converted_plate(tmp_path)


def damage(path, how: str) -> None:
    if how == "missing":
        path.unlink()
    elif how == "garbage":
        path.write_bytes(
            np.random.default_rng(0).integers(0, 256, path.stat().st_size, dtype=np.uint8).tobytes()
        )
    else:  # truncated
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


@pytest.mark.parametrize("how", ["missing", "garbage", "truncated"])
def test_embed_skips_a_damaged_field_and_lists_it(plate, model, tmp_path, how, caplog):
    clean = embed(plate, model, level="cell", labels="nuclei")
    damage(chunk_file(plate, "A/1/0", "0", "0/0/0/1/1"), how)
    with caplog.at_level(logging.WARNING):
        adata = embed(plate, model, tmp_path / f"{how}.h5ad", level="cell", labels="nuclei")
    skipped = adata.uns["cellfm"]["skipped"]
    assert list(skipped["source"]) == [f"{plate}/A/1/0"]
    assert list(skipped["chunks"]) == ["0/0/0/1/1"]
    assert skipped["kind"][0] == ("absent_chunks" if how == "missing" else "decode_error")
    assert "skipping field" in caplog.text and "0/0/0/1/1" in caplog.text
    kept = clean[~((clean.obs["well"] == "A1") & (clean.obs["field"] == "0")).to_numpy()]
    assert list(adata.obs_names) == list(kept.obs_names)  # the damaged field's cells are not embedded
    np.testing.assert_allclose(adata.X, kept.X, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"A/1/0 array 'A/1/0/0'.* chunks 0/0/0/1/1"):
        run_embed(plate, model, tmp_path / "fail.h5ad", level="cell", labels="nuclei", on_bad_data="fail")


def test_embed_names_a_corrupt_labels_chunk(plate, model):
    damage(chunk_file(plate, "A/2/1", "labels/nuclei/0", "0/0/0/0/0"), "garbage")
    adata = embed(plate, model, level="cell", labels="nuclei")
    skipped = adata.uns["cellfm"]["skipped"]
    assert list(skipped["array"]) == ["A/2/1/labels/nuclei/0"] and skipped["kind"][0] == "decode_error"
    assert "A2" in set(adata.obs["well"])  # the other field of the well is kept


def test_pretrain_mask_level_damage_is_counted_not_fatal(plate, tmp_path, caplog):
    from cellfm.data import CropDataset

    damage(chunk_file(plate, "A/1/0", "1", "0/0/0/0/0"), "garbage")  # the level read for the mask
    kw = dict(crop_size=32, crops_per_epoch=16, crops_per_field=2, mask_max_size=32, seed=0)
    ds = CropDataset([plate], **kw)
    ds.bad_data_log = str(tmp_path / "bad.jsonl")
    with caplog.at_level(logging.WARNING):
        crops = list(ds)
    assert len(crops) == 16 and all(m["source"] != f"{plate}/A/1/0" for _, m in crops)
    assert ds.counters["missing_or_bad_fields"] >= 1
    assert "A/1/0/1" in (tmp_path / "bad.jsonl").read_text()
    with pytest.raises(ValueError, match=r"array 'A/1/0/1'.*decode error in chunks 0/0/0/0/0"):
        list(CropDataset([plate], on_bad_data="fail", **kw))


def test_pretrain_crop_damage_is_skipped_counted_and_summarised(plate, tmp_path, caplog):
    from cellfm.ssl.train import pretrain
    from tests.test_ssl_train import _cfg

    for field in ("A/1/0", "A/1/1"):
        damage(chunk_file(plate, field, "0", "0/0/0/0/1"), "missing")
    cfg = _cfg("model.in_chans=2", "augment.channels.num_channels=2", "data.field_crop_size=32",
               "data.foreground=false")  # fmt: skip
    with caplog.at_level(logging.WARNING):
        pretrain(cfg, [plate], tmp_path / "run", steps=2)
    assert "skipped" in caplog.text and "bad_data.jsonl" in caplog.text
    assert "absent_chunks" in (tmp_path / "run" / "bad_data.jsonl").read_text()


def test_nan_pixels_are_an_error_by_default_or_zeroed_or_skipped(tmp_path, model):
    store = convert(tiff_folder(tmp_path / "t", nan_patch=True), tmp_path / "nan.ome.zarr")
    with pytest.raises(ValueError, match=r"A/1/0: non finite: 144 NaN/Inf pixels"):
        embed(store, model)
    zeroed = embed(store, model, nan_policy="zero")
    assert np.isfinite(zeroed.X).all() and zeroed.n_obs == 4
    skipped = embed(store, model, nan_policy="skip")
    assert skipped.n_obs == 3 and list(skipped.uns["cellfm"]["skipped"]["kind"]) == ["non_finite"]
    from cellfm.data import CropDataset

    with pytest.raises(ValueError, match="NaN/Inf pixels"):
        list(CropDataset([store], crop_size=32, crops_per_epoch=32, foreground=False, seed=0))


def test_nan_weights_are_refused_at_load(tmp_path, plate):
    import torch

    from cellfm.checkpoints import CheckpointError, load_backbone, save_backbone
    from tests.test_embed_api import tiny_model as build

    net = build()
    with torch.no_grad():
        net.blocks[0].attn.qkv.weight[3, 2] = float("nan")
    path = save_backbone(net, tmp_path / "nan.safetensors", channel_names=["DNA", "RNA"])
    with pytest.raises(
        CheckpointError, match=r"nan.safetensors: tensor 'blocks.0.attn.qkv.weight': 1 NaN/Inf"
    ):
        load_backbone(path)
    with pytest.raises(CheckpointError, match="NaN/Inf"):
        embed(plate, str(path))
