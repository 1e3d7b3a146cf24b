"""cellfm curate on a plate of real images with injected duplicates / empty / blurred / repeated fields;
pretraining from a curation; search by example; bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellfm.cli import main
from cellfm.curate import balanced_weights, curate, duplicate_groups, normalised_entropy, read_table, search
from cellfm.curate.config import QCThresholds
from cellfm.curate.kmeans import Hierarchy
from cellfm.curate.qc import measure, reasons
from cellfm.curate.rebalance import cap_rows, water_fill
from cellfm.data.writer import create_plate, write_image
from tests.curate_plate import build_plate


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    root = tmp_path_factory.mktemp("curate")
    plate = build_plate(root / "plate.ome.zarr")
    out = root / "curation"
    assert main(["curate", plate.path, "-o", str(out), "--no-progress"]) == 0  # the CLI, end to end
    return plate, out, read_table(out)


def _kind(plate, table):
    return table["well"].map(plate.wells)


def test_curation_flags_injected_duplicates_empty_and_blurred_fields(curated):
    plate, out, table = curated
    kind = _kind(plate, table)
    reason = table["reason"]
    assert (reason[kind == "empty"] == "empty").all()
    assert (reason[kind == "blurred"] == "out_of_focus").all()
    flagged = reason.str.startswith("duplicate_of:")
    # Injected copies whose original passes QC (a copy of a blurred original is flagged as blurred).
    qc_fail = set(table.loc[reason.isin(["empty", "out_of_focus", "saturated", "invalid"]), "well"])
    original = table["well"].map(plate.duplicate_of)
    injected = kind.str.startswith("dup_") & ~original.isin(qc_fail)
    tp = int((flagged & injected).sum())
    recall, precision = tp / injected.sum(), tp / max(flagged.sum(), 1)
    per_kind = flagged[injected].groupby(kind[injected]).mean().round(2).to_dict()
    print(f"duplicates: recall {recall:.3f} precision {precision:.3f} per kind {per_kind}")
    # Exact, noisy, 1-3 px shifted, 5% zoomed and intensity-rescaled copies (README "Curation";
    # held-out plates: benchmarks/copy_detection.py).
    assert recall >= 0.95 and precision >= 0.95, (recall, precision, per_kind)
    assert set(per_kind) == {"dup_exact", "dup_noise", "dup_shift", "dup_rescale", "dup_intensity"}
    assert min(per_kind.values()) >= 2 / 3, per_kind  # no kind is mostly missed
    # A duplicate points at its original (or at a row of the same group).
    for i in np.flatnonzero((flagged & injected).to_numpy()):
        target = reason.iloc[i].split(":", 1)[1]
        assert target in set(table["id"])
    assert (
        table.loc[~table["keep"], "cluster"].eq(-1).all() and table.loc[~table["keep"], "weight"].eq(0).all()
    )
    assert (table.loc[table["keep"], "weight"] > 0).all()


def test_kept_cluster_sizes_are_flatter(curated):
    import anndata as ad

    _, out, table = curated
    stats = ad.read_h5ad(out / "curation.h5ad").uns["curation"]
    print(f"normalised entropy before {stats['entropy_before']:.3f} after {stats['entropy_after']:.3f}")
    # The report's numbers: leaf clusters of every QC-passing row vs the weighted kept rows.
    assert stats["entropy_after"] > stats["entropy_before"]
    # Balanced sampling water-fills the budget over the top clusters (then within each over its
    # children), so the top level is what it makes flat; leaf clusters flatten only as far as that allows.
    kept = table[table["keep"]]
    before = np.bincount(kept["cluster_top"])
    after = np.bincount(kept["cluster_top"], weights=kept["weight"])
    assert after == pytest.approx(water_fill(before, after.sum()))
    assert normalised_entropy(after) > normalised_entropy(before) + 0.02, (before, after)


def test_outputs_are_complete(curated):
    import anndata as ad
    import faiss

    _, out, table = curated
    for col in ("source", "plate", "well", "field", "y", "x", "keep", "reason", "cluster", "weight"):
        assert col in table.columns
    assert table["keep"].dtype == bool and (table["weight"] >= 0).all()
    adata = ad.read_h5ad(out / "curation.h5ad")
    assert list(adata.obs_names) == list(table["id"]) and adata.n_obs == len(table)
    assert faiss.read_index(str(out / "index.faiss")).ntotal == len(table)
    report = (out / "report.md").read_text()
    for png in ("cluster_sizes.png", "qc_histograms.png", "top_clusters.png"):
        assert f"report/{png}" in report and (out / "report" / png).stat().st_size > 1000
    assert not (out / ".work").exists() and not list(out.glob(".staging-*"))
    with pytest.raises(ValueError, match="already holds a curation"):
        curate(table["source"].iloc[0].rsplit("/", 3)[0], out)


def test_crop_dataset_reads_only_kept_fields(curated, monkeypatch):
    from cellfm.data import CropDataset
    from cellfm.data.stores import Image

    plate, out, table = curated
    dropped = set(table.loc[~table["keep"], "source"])
    real_read = Image.read

    def read(self, *a, **k):  # a dropped field raises if anything reads its pixels
        if self.source in dropped:
            raise AssertionError(f"dropped field {self.source} was read")
        return real_read(self, *a, **k)

    monkeypatch.setattr(Image, "read", read)
    real_full = Image.read_full

    def read_full(self, *a, **k):
        if self.source in dropped:
            raise AssertionError(f"dropped field {self.source} was read")
        return real_full(self, *a, **k)

    monkeypatch.setattr(Image, "read_full", read_full)
    ds = CropDataset([plate.path], crop_size=64, crops_per_epoch=64, crops_per_field=2, curation=str(out))
    assert {im.source for im in ds.images} == set(table.loc[table["keep"], "source"])
    seen = [meta["source"] for _, meta in ds]
    assert len(seen) == 64 and not set(seen) & dropped
    # Nothing failed to read; a kept field whose crops all have too little foreground for the sampler
    # (a sparse nuclei view) is skipped by design and counted as background.
    assert not {k: v for k, v in ds.counters.items() if v and k != "background_fields"}


def test_pretrain_with_curation_records_its_sha256(curated, tmp_path):
    import yaml

    from cellfm.curate.table import sha256
    from cellfm.ssl.config import load_ssl_config
    from cellfm.ssl.train import pretrain
    from tests.test_ssl_train import TINY

    plate, out, _ = curated
    cfg = load_ssl_config(
        "cpu_tiny", TINY + [f"data.curation={out}", "train.epochs=1", "train.iters_per_epoch=2"]
    )
    pretrain(cfg, [plate.path], tmp_path / "run")
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["curation_sha256"] == sha256(out / "curation.parquet")
    bad = load_ssl_config("cpu_tiny", TINY + [f"data.curation={out}", "data.curation_sha256=abc"])
    with pytest.raises(ValueError, match="differs from data.curation_sha256"):
        pretrain(bad, [plate.path], tmp_path / "run2")


def test_curation_that_does_not_match_the_stores_is_an_error(curated, tmp_path):
    from cellfm.data import CropDataset

    _, out, _ = curated
    other = _plate(tmp_path / "other.ome.zarr", [np.random.default_rng(0).integers(0, 4000, (128, 128))])
    with pytest.raises(ValueError, match="does not match the stores.*not in the stores given"):
        CropDataset([other], crop_size=64, curation=str(out))


def test_search_finds_the_field_of_a_rotated_flipped_or_cropped_copy(curated):
    plate, out, table = curated
    originals = set(plate.duplicate_of.values())
    wells = [w for w, k in plate.wells.items() if k == "distinct" and w not in originals][:3]
    for well in wells:
        img = plate.images[well]
        for name, query in (("rot90", np.rot90(img)), ("flip", img[:, ::-1]), ("crop", img[5:-3, 3:-5])):
            result = search(out, query, k=3)
            assert result.iloc[0]["well"] == well, (name, result[["well", "score"]].values.tolist())


def test_search_cli_writes_table_and_montage(curated, tmp_path):
    plate, out, _ = curated
    well = next(w for w, k in plate.wells.items() if k == "distinct")
    np.save(tmp_path / "q.npy", np.rot90(plate.images[well]).copy())
    assert (
        main(["search", str(out), "--query", str(tmp_path / "q.npy"), "-k", "4", "-o", str(tmp_path / "res")])
        == 0
    )
    res = pd.read_csv(tmp_path / "res" / "results.csv")
    assert len(res) == 4 and res["score"].is_monotonic_decreasing
    assert (tmp_path / "res" / "montage.png").stat().st_size > 1000


def _plate(path, images):
    wells = {f"A/{i + 1}": ["0"] for i in range(len(images))}
    root = create_plate(str(path), "p", wells, "0.4", mode="w")
    for (well, _), img in zip(wells.items(), images):
        write_image(root[well].require_group("0"), np.asarray(img, np.uint16)[None], ["DNA"], "0.4", chunk=128,
                    min_level_size=128)  # fmt: skip
    return str(path)


def test_bad_input_empty_store_and_all_fields_failing_qc(tmp_path, capsys):
    empty = tmp_path / "empty.ome.zarr"
    create_plate(str(empty), "empty", {"A/1": []}, "0.4", mode="w")
    assert main(["curate", str(empty), "-o", str(tmp_path / "o1"), "--no-progress"]) == 1
    assert "no fields found" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists()
    rng = np.random.default_rng(0)
    flat = _plate(tmp_path / "flat.ome.zarr", [300 + rng.integers(0, 3, (128, 128)) for _ in range(3)])
    with pytest.raises(ValueError, match="every one of the 3 fields fails quality control"):
        curate(flat, tmp_path / "o2")
    assert not (tmp_path / "o2" / "curation.parquet").exists()
    assert not list((tmp_path / "o2").glob("curation.*")) and not (tmp_path / "o2" / "report.md").exists()
    # The embedding is kept: a rerun with relaxed thresholds reuses it and succeeds.
    assert (tmp_path / "o2" / ".work" / "embedding.h5ad").is_file()
    relaxed = QCThresholds(min_foreground=0, min_contrast=0, min_snr=0, min_focus=0)
    assert curate(flat, tmp_path / "o2", qc=relaxed)["reason"].isin(["ok"]).any()


def test_qc_measures_and_reasons():
    rng = np.random.default_rng(0)
    cells = np.zeros((64, 64), np.uint16)
    cells[10:20, 10:20] = cells[40:50, 30:45] = 3000
    cells += rng.integers(0, 20, cells.shape).astype(np.uint16)
    sat = cells.copy()
    sat[:20] = 65535
    nan = np.full((64, 64), np.nan, np.float32)
    const = np.full((64, 64), 7, np.uint16)
    ms = [measure(a[None]) for a in (cells, cells, cells, sat, nan, const)]
    m = {k: np.array([x[k] for x in ms]) for k in ms[0]}
    assert list(reasons(m, QCThresholds())) == ["ok", "ok", "ok", "saturated", "invalid", "invalid"]


def test_copy_detection_aligns_shifted_and_zoomed_copies_only():
    from scipy import ndimage

    from cellfm.curate.copydetect import aligned_similarity, alignment_thumbnails, combine, image_descriptor
    from tests.curate_plate import distinct_crops, near_copy

    crops = distinct_crops()
    rng = np.random.default_rng(1)
    img = crops[5]
    thumb = alignment_thumbnails(img[None])
    assert thumb.shape == (2, 1, 48, 48) and thumb.dtype == np.float16
    shifted = ndimage.shift(img.astype(np.float32), (3, -3), mode="reflect")
    for copy in (shifted, near_copy(img, "rescale", rng), near_copy(img, "noise", rng), img * 0.5):
        assert aligned_similarity(thumb, alignment_thumbnails(copy[None])) > 0.92
    # unaligned (no shift search) the shifted copy correlates less: the search is what finds it
    plain = alignment_thumbnails(shifted[None])
    assert aligned_similarity(thumb, plain, radius=0) < aligned_similarity(thumb, plain) - 0.05
    others = [aligned_similarity(thumb, alignment_thumbnails(c[None])) for c in crops[6:30]]
    assert max(others) < 0.85, max(others)
    desc = image_descriptor(img[None])
    assert desc.shape == (256,) and abs(float(desc.std()) - 1) < 1e-3
    assert np.allclose(image_descriptor((img * 3.0)[None]), desc, atol=1e-4)  # blind to intensity scale
    x = combine(rng.random((5, 8)), rng.random((5, 3)), 0.25)
    assert x.shape == (5, 11) and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="image_weight"):
        combine(np.ones((2, 2)), np.ones((2, 2)), 1.5)
    with pytest.raises(ValueError, match="expected a non-empty"):
        alignment_thumbnails(np.zeros((1, 0, 5)))


def test_duplicate_groups_and_balanced_weights():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(20, 32))
    x = np.vstack([base, base[:5] + 0.01 * rng.normal(size=(5, 32))])
    dup_of, pairs = duplicate_groups(x, 0.99)
    assert list(dup_of[:20]) == [-1] * 20 and list(dup_of[20:]) == [0, 1, 2, 3, 4] and pairs == 5
    assert np.allclose(water_fill(np.array([1, 10, 10]), 9), [1, 4, 4])
    # one top cluster of 90 rows in 3 leaves, one of 10 rows in 1 leaf: the draw is balanced across both
    leaf = np.array([0] * 30 + [1] * 30 + [2] * 30 + [3] * 10)
    hier = Hierarchy([leaf, np.array([0, 0, 0, 1])[leaf]], [np.zeros((4, 2)), np.zeros((2, 2))])
    w = balanced_weights(hier, 20)
    assert np.isclose(w[leaf == 3].sum(), 10) and np.isclose(w[leaf < 3].sum(), 10)
    assert np.isclose(w[leaf == 0].sum(), w[leaf == 1].sum())
    assert len(cap_rows(np.arange(10) < 6, np.ones(10, bool), 0.2)) == 5  # 6 controls, 4 others -> 1 left


def test_tile_level_curation_keeps_crops_inside_kept_tiles(tmp_path):
    from cellfm.data import CropDataset
    from tests.curate_plate import distinct_crops

    rng = np.random.default_rng(0)
    crops = distinct_crops()[:4]
    images = []
    for img in crops:  # right half flat + noise: its tiles are empty
        img = img.copy()
        img[:, 64:] = 300 + rng.integers(0, 3, (128, 64))
        images.append(img)
    store = _plate(tmp_path / "half.ome.zarr", images)
    table = curate(store, tmp_path / "cur", level="tile", tile_size=64)
    assert len(table) == 16 and (table["tile"] >= 0).all()
    right = table["x"] >= 64
    assert (table.loc[right, "reason"] == "empty").all() and table.loc[~right, "keep"].any()
    kept = table[table["keep"]]
    for foreground in (False, True):
        ds = CropDataset([store], crop_size=32, crops_per_epoch=48, crops_per_field=4, foreground=foreground,
                         min_foreground=0.0, curation=str(tmp_path / "cur"))  # fmt: skip
        seen = 0
        for _, meta in ds:
            mine = kept[kept["source"] == meta["source"]]
            inside = (mine["y"] <= meta["y"]) & (meta["y"] + 32 <= mine["y"] + mine["height"])
            inside &= (mine["x"] <= meta["x"]) & (meta["x"] + 32 <= mine["x"] + mine["width"])
            assert inside.any(), (foreground, meta)
            seen += 1
        assert seen == 48


def test_control_wells_are_capped(tmp_path):
    from tests.curate_plate import distinct_crops

    crops = distinct_crops()[:10]
    store = _plate(tmp_path / "ctrl.ome.zarr", crops)
    treatments = ["DMSO"] * 7 + ["drug"] * 3
    meta = tmp_path / "wells.csv"
    meta.write_text("well,treatment\n" + "".join(f"A{i + 1},{t}\n" for i, t in enumerate(treatments)))
    out = tmp_path / "cur"
    argv = ["curate", store, "-o", str(out), "--metadata", str(meta), "--controls", "treatment=DMSO",
            "--max-control-fraction", "0.5", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    table = read_table(out)
    control = table["well"].isin([f"A{i + 1}" for i in range(7)])
    kept = table["keep"]
    assert (table.loc[kept & control].shape[0]) <= 0.5 * kept.sum()
    assert (table.loc[control & ~kept, "reason"] == "cap").sum() >= 1
    assert main(["curate", store, "-o", str(tmp_path / "c2"), "--controls", "nope=1", "--max-control-fraction",
                 "0.5", "--no-progress"]) == 1  # fmt: skip
