"""Crop dataset: contract, sharding over ranks x workers, foreground, weighting, cells, bad chunks, stats."""

import os

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

from cellfm.data import (
    CropDataset,
    collate_samples,
    compute_stats,
    field_weights,
    list_fields,
    load_stats,
    save_stats,
)
from cellfm.data.sampler import otsu_threshold
from cellfm.data.writer import create_plate, with_version, write_image

NAMES = ["DNA", "ER", "RNA", "AGP", "Mito"]
SIZE = 192


def fluorescent_field(seed, n_blobs=6):
    """5-channel uint16 field: dim noisy background, bright blobs only in the top-left quadrant."""
    rng = np.random.default_rng(seed)
    img = rng.normal(100, 5, size=(5, SIZE, SIZE))
    yy, xx = np.mgrid[:SIZE, :SIZE]
    centres = rng.integers(15, SIZE // 2 - 15, size=(n_blobs, 2))
    for cy, cx in centres:
        img += 3000 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 6.0**2))[None]
    return img.clip(0, 65535).astype(np.uint16), centres


def make_plate(path, version="0.4", names=NAMES, wells=None, labels=False):
    wells = wells or {"A/1": ["0", "1"], "A/2": ["0"]}
    root = create_plate(str(path), path.name.split(".")[0], wells, version)
    truth = {}
    for i, (well, fields) in enumerate(wells.items()):
        for f in fields:
            img, centres = fluorescent_field(10 * i + int(f))
            order = [NAMES.index(n) for n in names]
            grp = root[well].require_group(f)
            write_image(grp, img[order], list(names), version, chunk=64, min_level_size=48)
            truth[(well.replace("/", ""), f)] = img[order]
            if labels:
                lab = np.zeros((1, SIZE, SIZE), dtype=np.uint16)
                for k, (cy, cx) in enumerate(centres, start=1):
                    lab[0, cy - 3 : cy + 4, cx - 3 : cx + 4] = k
                lg = grp.require_group("labels")
                lg.attrs.update(with_version(version, {"labels": ["cells"]}))
                cells = lg.require_group("cells")
                write_image(cells, lab, ["cells"], version, chunk=64, min_level_size=SIZE)
    return str(path), truth


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    return make_plate(tmp_path_factory.mktemp("plates") / "P1.ome.zarr", labels=True)


def _items(ds, num_workers):
    loader = DataLoader(ds, batch_size=4, num_workers=num_workers, collate_fn=collate_samples)
    out = []
    for x, metas in loader:
        assert x.dtype == torch.float32 and x.shape[1:] == (5, 32, 32)
        out += [(m["item"], m["source"], m["y"], m["x"]) for m in metas]
    return out


def test_sample_contract(plate):
    uri, truth = plate
    ds = CropDataset([uri], crop_size=32, crops_per_epoch=6, crops_per_field=3, foreground=False)
    x, meta = next(iter(ds))
    assert x.dtype == torch.float32 and x.shape == (5, 32, 32)
    assert meta["plate"] == "P1" and meta["channels"] == NAMES and meta["source"].startswith(uri)
    y0, x0 = meta["y"], meta["x"]
    np.testing.assert_array_equal(
        x.numpy(), truth[(meta["well"], meta["field"])][:, y0 : y0 + 32, x0 : x0 + 32]
    )


def test_sharding_two_ranks_two_workers_no_duplicates_or_gaps(plate):
    uri, _ = plate
    kw = {"crop_size": 32, "crops_per_epoch": 30, "crops_per_field": 4, "foreground": True, "seed": 3}
    reference = CropDataset([uri], rank=0, world_size=1, **kw)
    reference.set_epoch(1)
    single = _items(reference, 0)
    sharded = []
    for rank in range(2):
        ds = CropDataset([uri], rank=rank, world_size=2, **kw)
        ds.set_epoch(1)
        sharded += _items(ds, 2)
    assert len(sharded) == 30 and len({s[0] for s in sharded}) == 30
    assert sorted(sharded) == sorted(single)  # same items, whatever the rank x worker layout
    reference.set_epoch(2)
    assert sorted(_items(reference, 0)) != sorted(single)  # a new epoch draws new crops


def test_foreground_sampling_skips_background(plate):
    uri, truth = plate
    common = {"crop_size": 32, "crops_per_epoch": 40, "crops_per_field": 4, "seed": 0}
    fg = [m for _, m in CropDataset([uri], foreground=True, min_foreground=0.2, **common)]
    assert all(m["y"] < SIZE // 2 and m["x"] < SIZE // 2 for m in fg)
    anywhere = [m for _, m in CropDataset([uri], foreground=False, **common)]
    assert any(m["y"] >= SIZE // 2 or m["x"] >= SIZE // 2 for m in anywhere)
    assert 100 < otsu_threshold(np.r_[np.full(500, 100.0), np.full(100, 3000.0)]) < 3000


def test_weighting_and_level_selection(plate):
    uri, _ = plate
    images = list_fields(uri)
    np.testing.assert_allclose(field_weights(images, "field"), [1 / 3] * 3)
    np.testing.assert_allclose(field_weights(images, "well"), [0.25, 0.25, 0.5])
    ds = CropDataset(
        [uri], crop_size=32, crops_per_epoch=400, crops_per_field=1, weighting="well", foreground=False
    )
    wells = [m["well"] for _, m in ds]
    assert 0.4 < wells.count("A2") / len(wells) < 0.6
    coarse = CropDataset([uri], level=1, crop_size=32, crops_per_epoch=8, foreground=False)
    assert all(m["y"] + 32 <= SIZE // 2 and m["level"] == 1 for _, m in coarse)
    with pytest.raises(ValueError, match="weighting 'wells' unknown"):
        field_weights(images, "wells")


def test_channel_matching_across_plates(tmp_path, plate):
    uri, truth = plate
    shuffled, _ = make_plate(tmp_path / "P2.ome.zarr", "0.5", names=NAMES[::-1], wells={"B/1": ["0"]})
    ds = CropDataset([uri, shuffled], crop_size=32, crops_per_epoch=20, crops_per_field=2, foreground=False)
    plates = set()
    for x, m in ds:
        plates.add(m["plate"])
        if m["plate"] == "P2":  # stored in reverse order, read back in the first plate's order
            ref = truth[("A1", "0")]  # P2's B/1/0 was drawn with the same seed as P1's A/1/0
            np.testing.assert_array_equal(x.numpy(), ref[:, m["y"] : m["y"] + 32, m["x"] : m["x"] + 32])
    assert plates == {"P1", "P2"}
    other, _ = make_plate(tmp_path / "P3.ome.zarr", names=["DNA", "ER", "RNA"], wells={"C/1": ["0"]})
    with pytest.raises(ValueError, match=r"channel sets differ.*'AGP'.*P3.*\['DNA', 'ER', 'RNA'\]"):
        CropDataset([uri, other], crop_size=32)
    ds = CropDataset([uri, other], channels=["RNA", "DNA"], crop_size=32, crops_per_epoch=4, foreground=False)
    assert next(iter(ds))[0].shape == (2, 32, 32)


def test_single_cell_mode_from_labels_and_csv(plate, tmp_path):
    uri, truth = plate
    ds = CropDataset([uri], crop_size=16, cells="labels", foreground=False)
    got = list(ds)
    assert len(got) == ds.epoch_size == 18  # 6 objects x 3 fields
    for _x, m in got:
        labels = zarr.open_group(uri, mode="r")[f"{m['well'][0]}/{m['well'][1:]}/{m['field']}/labels/cells/0"]
        window = labels[0, 0, 0, m["y"] : m["y"] + 16, m["x"] : m["x"] + 16]
        assert window[8, 8] == m["cell_id"]  # the object sits at the crop centre
    (tmp_path / "cells.csv").write_text("plate,well,field,y,x,cell_id\nP1,A1,1,50,60,7\nP1,A2,0,2,190,8\n")
    items = list(CropDataset([uri], crop_size=16, cells=str(tmp_path / "cells.csv")))
    assert sorted((m["cell_id"], m["y"], m["x"]) for _, m in items) == [(7, 42, 52), (8, 0, 176)]


def test_corrupt_and_missing_chunks_are_skipped_and_counted(tmp_path, caplog):
    uri, _ = make_plate(tmp_path / "bad.ome.zarr", wells={"A/1": ["0"]})
    chunk_dir = tmp_path / "bad.ome.zarr" / "A" / "1" / "0" / "0" / "0" / "0" / "0"
    (chunk_dir / "0" / "0").write_bytes(b"not a blosc chunk")  # corrupt chunk (y=0, x=0)
    os.remove(chunk_dir / "2" / "2")  # missing chunk (y=2, x=2)
    ds = CropDataset([uri], crop_size=64, crops_per_epoch=60, crops_per_field=1, foreground=False)
    got = list(ds)
    assert ds.counters["bad_chunks"] > 0 and ds.counters["missing_chunks"] > 0
    assert len(got) == 60 - ds.counters["bad_chunks"] - ds.counters["missing_chunks"]
    assert "skipped" in caplog.text and "bad_chunks" in caplog.text


def test_channel_stats_streamed_saved_and_applied(plate, tmp_path):
    uri, truth = plate
    stats = compute_stats(list_fields(uri), percentiles=(1.0, 99.0))
    stacked = np.concatenate([a.reshape(5, -1) for a in truth.values()], axis=1).astype(np.float64)
    np.testing.assert_allclose(stats.mean, stacked.mean(1), rtol=1e-9)
    np.testing.assert_allclose(stats.std, stacked.std(1), rtol=1e-6)
    np.testing.assert_allclose(stats.p_high, np.percentile(stacked, 99.0, axis=1), rtol=0.02)
    assert stats.n_pixels == stacked.shape[1]
    save_stats(stats, uri)
    assert load_stats(uri) == stats
    save_stats(stats, str(tmp_path / "x.tif"))
    assert load_stats(str(tmp_path / "x.tif")).channels == NAMES
    ds = CropDataset([uri], crop_size=32, crops_per_epoch=4, foreground=False, stats=load_stats(uri))
    x, m = next(iter(ds))
    raw = truth[(m["well"], m["field"])][:, m["y"] : m["y"] + 32, m["x"] : m["x"] + 32]
    lo, hi = np.array(stats.p_low)[:, None, None], np.array(stats.p_high)[:, None, None]
    np.testing.assert_allclose(x.numpy(), (raw - lo) / (hi - lo), rtol=1e-5)
    with pytest.raises(KeyError, match="missing \\['GFP'\\]"):
        stats.select(["GFP"])
