"""`curate()`: embed every field / tile (resumably, via cellfm.embed), QC, deduplicate, rebalance, and
write the curation folder (table, AnnData, index, report) only once everything has succeeded."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from cellfm.atomic import atomic_write, atomic_write_text

from . import qc
from .config import CurateConfig
from .copydetect import alignment_thumbnails, copy_groups, image_descriptor
from .dedup import normalise, pooled_descriptor
from .kmeans import assign, default_levels, hierarchical_kmeans
from .rebalance import balanced_weights, cap_rows, normalised_entropy
from .table import ANNDATA, INDEX, TABLE, sha256, summary, write_table

log = logging.getLogger(__name__)
WORK = ".work"  # embedding rows and patch maps of an unfinished run (kept for resuming)


@contextlib.contextmanager
def output_lock(out: Path):
    """The curation folder is locked against a concurrent `cellfm curate` on it (`DIR.lock`, naming
    the holder: `cellfm.locking`)."""
    from cellfm.locking import exclusive

    with exclusive(out, "cellfm curate"):
        yield


def row_windows(
    adata, images: dict[str, Any], level: str, patch: int, tile: int, overlap: int
) -> pd.DataFrame:
    """(source, tile, y, x, height, width) of every embedded row in the image's level pixels."""
    from cellfm.embed.tiling import tile_grid

    obs = adata.obs
    sources = obs["source"].astype(str).to_numpy()
    tiles = obs["tile"].to_numpy() if "tile" in obs else np.full(len(obs), -1)
    y = np.zeros(len(obs), np.int64)
    x, h, w = y.copy(), y.copy(), y.copy()
    grids: dict[str, list] = {}
    for i, (src, t) in enumerate(zip(sources, tiles)):
        _, ih, iw = images[src].shape
        if level == "field":
            y[i], x[i], h[i], w[i] = 0, 0, ih, iw
            continue
        if src not in grids:
            grids[src] = tile_grid(-(-ih // patch) * patch, -(-iw // patch) * patch, tile, overlap)
        ty, tx, th, tw = grids[src][int(t)]
        y[i], x[i], h[i], w[i] = ty, tx, min(th, ih - ty), min(tw, iw - tx)
    frames = pd.DataFrame({"source": sources, "tile": tiles.astype(np.int64), "y": y, "x": x, "height": h,
                           "width": w})  # fmt: skip
    return frames


def measure_rows(windows: pd.DataFrame, images: dict[str, Any], patch_store: Path, field_index: dict[str, int],
                 patch: int, grid: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """QC measures and the copy-detection descriptors of every row: pooled patch features, low-pass
    image descriptor, band-pass alignment thumbnail (`copydetect`; each field is read once)."""
    from cellfm.embed.patch_store import read_patch_map

    measures = {k: np.zeros(len(windows)) for k in qc.MEASURES}
    desc: list[np.ndarray | None] = [None] * len(windows)
    image: list[np.ndarray | None] = [None] * len(windows)
    thumbs: list[np.ndarray | None] = [None] * len(windows)
    for src, rows in windows.groupby("source", sort=False).groups.items():
        pixels = images[src].read_full()
        pmap = read_patch_map(patch_store, field_index[src])[0]
        for r in rows:
            y, x, h, w = (int(windows.at[r, c]) for c in ("y", "x", "height", "width"))
            window = pixels[:, y : y + h, x : x + w]
            for k, v in qc.measure(window).items():
                measures[k][r] = v
            image[r], thumbs[r] = image_descriptor(window), alignment_thumbnails(window)
            py, px = y // patch, x // patch
            cell = pmap[py : max(py + 1, -(-(y + h) // patch)), px : max(px + 1, -(-(x + w) // patch))]
            desc[r] = pooled_descriptor(np.asarray(cell, dtype=np.float32), grid)
    return measures, np.stack(desc), np.stack(image), np.stack(thumbs)


def curate(
    stores: str | os.PathLike | list,
    output: str | os.PathLike,
    model: str | os.PathLike | nn.Module | None = None,
    *,
    config: CurateConfig | None = None,
    metadata: str | os.PathLike | None = None,
    workers: int = 1,
    client: Any = None,
    overwrite: bool = False,
    progress: bool = False,
    **options: Any,
) -> pd.DataFrame:
    """Curate `stores` into folder `output`; returns the curation table (see README "Curation")."""
    cfg = replace(config, **options) if config is not None else CurateConfig(**options)
    out = Path(output)
    if (out / TABLE).exists() and not overwrite:
        raise ValueError(
            f"{out}: already holds a curation ({TABLE}); pass overwrite (--overwrite) to replace it"
        )
    stores = [str(s) for s in (stores if isinstance(stores, list | tuple) else [stores])]
    with output_lock(out):
        return _curate(stores, out, model, cfg, metadata, workers, client, overwrite, progress)


def _embed(stores, out, model, cfg, metadata, workers, client, progress) -> tuple[Path, Path]:
    from cellfm.embed import run_embed

    work = out / WORK
    emb, patches = work / "embedding.h5ad", work / "patches.zarr"
    job = json.dumps({"stores": stores, "level": cfg.level, "tile_size": cfg.tile_size, "overlap": cfg.overlap,
                      "metadata": str(metadata),
                      "model": str(model) if not isinstance(model, nn.Module) else None})  # fmt: skip
    sig = work / "curate_job.json"
    if emb.exists() and (isinstance(model, nn.Module) or not sig.is_file() or sig.read_text() != job):
        log.info("%s was embedded by another job; embedding again", emb)
        emb.unlink()
        shutil.rmtree(patches, ignore_errors=True)
    if not emb.exists():  # an earlier run that failed after embedding (e.g. QC) reuses its embedding
        atomic_write_text(sig, job)
        run_embed(stores, model, emb, patch_features=patches, metadata=metadata, workers=workers,
                  client=client, progress=progress, level=cfg.level, tile_size=cfg.tile_size,
                  overlap=cfg.overlap, batch_size=cfg.batch_size, device=cfg.device)  # fmt: skip
    return emb, patches


def _curate(
    stores, out, model, cfg: CurateConfig, metadata, workers, client, overwrite, progress
) -> pd.DataFrame:
    import anndata as ad

    from cellfm.embed.config import EmbedConfig
    from cellfm.embed.job import plan_fields

    images, plan = plan_fields(stores, EmbedConfig(level=cfg.level))  # "no fields found" before any work
    fresh = not out.exists()
    try:
        emb, patches = _embed(stores, out, model, cfg, metadata, workers, client, progress)
    except BaseException:
        if fresh and out.exists() and not any((out / WORK).glob("*.parts/rows/*")):
            shutil.rmtree(out, ignore_errors=True)  # nothing worth resuming: leave no folder behind
        raise
    adata = ad.read_h5ad(emb)
    info = adata.uns["cellfm"]
    by_source = {im.source: im for im in images}
    field_index = {p.source: i for i, p in enumerate(plan)}
    patch = int(info["architecture"]["patch_size"])
    windows = row_windows(adata, by_source, cfg.level, patch, int(info["tile_size"]), int(info["overlap"]))
    measures, desc, image, thumbs = measure_rows(windows, by_source, patches, field_index, patch,
                                                 cfg.descriptor_grid)  # fmt: skip
    table = pd.DataFrame({"id": adata.obs_names.astype(str), "source": windows["source"],
                          "plate": adata.obs["plate"].astype(str).to_numpy(),
                          "well": adata.obs["well"].astype(str).to_numpy(),
                          "field": adata.obs["field"].astype(str).to_numpy()})  # fmt: skip
    for col in ("tile", "y", "x", "height", "width"):
        table[col] = windows[col].to_numpy()
    reason = qc.reasons(measures, cfg.qc)
    ok = reason == "ok"
    if not ok.any():
        counts = pd.Series(reason).value_counts().to_dict()
        raise ValueError(f"{stores}: every one of the {len(reason)} {cfg.level}s fails quality control "
                         f"({counts}); nothing written to {out}. Check the images or relax the thresholds "
                         "(--min-focus, --min-foreground, --min-contrast, --max-saturated)")  # fmt: skip
    # -- deduplicate the rows that pass QC ---------------------------------------------------------
    idx = np.flatnonzero(ok)
    dup_of, pairs = copy_groups(image[idx], desc[idx], thumbs[idx], cfg)
    ids = table["id"].to_numpy()
    for j in np.flatnonzero(dup_of >= 0):
        reason[idx[j]] = f"duplicate_of:{ids[idx[dup_of[j]]]}"
    keep = reason == "ok"
    # -- metadata caps (e.g. controls at most X% of the data) --------------------------------------
    if cfg.controls and cfg.max_control_fraction is not None:
        matches = np.ones(len(table), bool)
        for key, value in cfg.controls.items():
            if key not in adata.obs:
                raise KeyError(f"--controls {key}={value}: no column {key!r} (have {list(adata.obs.columns)}; "
                               "metadata columns come from --metadata)")  # fmt: skip
            matches &= adata.obs[key].astype(str).to_numpy() == str(value)
        capped = cap_rows(matches, keep, cfg.max_control_fraction, cfg.seed)
        reason[capped] = "cap"
        keep = reason == "ok"
    # -- hierarchical k-means and balanced weights over the kept rows ------------------------------
    X = np.asarray(adata.X, dtype=np.float32)
    centre = X[keep].mean(0)
    feats = normalise(X - centre)
    kept = np.flatnonzero(keep)
    levels = list(cfg.kmeans_levels or default_levels(len(kept)))
    hier = hierarchical_kmeans(feats[kept], levels, cfg.kmeans_iters, cfg.resample_steps, cfg.seed)
    weights = balanced_weights(hier, cfg.sample_fraction * len(kept))
    cluster = np.full(len(table), -1, np.int64)
    cluster_top = cluster.copy()
    cluster[kept], cluster_top[kept] = hier.labels[0], hier.labels[-1]
    weight = np.zeros(len(table))
    weight[kept] = weights
    table["keep"], table["reason"], table["cluster"], table["cluster_top"] = (
        keep,
        reason.astype(str),
        cluster,
        cluster_top,
    )
    table["weight"] = weight
    for k, v in measures.items():
        table[f"qc_{k}"] = v
    # Entropy of the cluster sizes: every QC-passing row (duplicates included) before, weighted kept after.
    leaf_all, _ = assign(feats[idx], normalise(hier.centroids[0]))
    n_leaf = len(hier.centroids[0])
    before = np.bincount(leaf_all, minlength=n_leaf)
    after = np.bincount(hier.labels[0], weights=weights, minlength=n_leaf)
    stats = {"levels": [len(c) for c in hier.centroids], "duplicate_pairs": int(pairs),
             "entropy_before": normalised_entropy(before), "entropy_after": normalised_entropy(after),
             "counts": summary(table), "config": cfg.to_dict(), "stores": stores,
             "centre": centre.astype(float).tolist()}  # fmt: skip
    _write_outputs(out, table, adata, feats, stats, before, after, by_source, cfg)
    shutil.rmtree(out / WORK, ignore_errors=True)
    log.info("curated %d %ss: kept %d, entropy %.3f -> %.3f", len(table), cfg.level, int(keep.sum()),
             stats["entropy_before"], stats["entropy_after"])  # fmt: skip
    return table


def _write_outputs(out, table, adata, feats, stats, before, after, images, cfg) -> None:
    """Every output is written to a staging folder first, then renamed into place (the table last)."""
    import faiss

    from cellfm.embed.provenance import clean

    from .dedup import build_index
    from .report import write_report

    stage = out / f".staging-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        atomic_write(stage / TABLE, lambda tmp: write_table(table, tmp))
        result = adata.copy()
        obs = table.set_index("id", drop=False)
        obs.index = obs.index.astype(str)
        result.obs = obs.drop(columns=["id"]).astype(
            {c: "category" for c in ("source", "plate", "well", "field", "reason")}
        )
        result.uns["curation"] = clean({**stats, "table_sha256": sha256(stage / TABLE)})
        atomic_write(stage / ANNDATA, lambda tmp: result.write_h5ad(tmp))
        index = build_index(feats, cfg.exact_max)
        atomic_write(stage / INDEX, lambda tmp: faiss.write_index(index, tmp))
        write_report(stage, table, stats, before, after, images)
        names = sorted(p.name for p in stage.iterdir() if p.name != TABLE)
        for name in names:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(stage / name, target)
        os.replace(stage / TABLE, out / TABLE)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
