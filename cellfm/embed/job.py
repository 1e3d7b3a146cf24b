"""`embed()`: plan the fields of one or more stores, check every input up front, run (resumably, in
one process or split across a dask.distributed cluster) and write the AnnData."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from cellfm.atomic import check_free_space, write_failed
from cellfm.data.plates import list_fields
from cellfm.data.stores import Image

from .bad_fields import skipped_table
from .config import EmbedConfig
from .encoder import Encoder, default_normalization, load_model, model_metadata, resolve_channels
from .fields import embed_fields
from .provenance import empty_wells, provenance
from .rowstore import RowStore
from .writer import FieldInfo, output_kind, write_anndata

log = logging.getLogger(__name__)


@dataclass
class JobSpec:
    """Everything a worker needs to embed any subset of the planned fields (picklable)."""

    model: Any
    cfg: EmbedConfig
    images: list[Image]
    labels: list[Image | None]
    plan: list[FieldInfo]
    channels: list[str]
    channel_ids: list[int] | None
    normalization: dict
    rows: str
    patch_store: str | None = None
    threads: int | None = None


def plan_fields(stores: list[str], cfg: EmbedConfig) -> tuple[list[Image], list[FieldInfo]]:
    """All fields of all stores, in store then plate order."""
    images: list[Image] = []
    for uri in stores:
        images += list_fields(str(uri), cfg.image_level)
    if not images:
        raise ValueError(f"no fields found in {stores}")
    return images, [FieldInfo(im.plate, im.well, im.field, im.source) for im in images]


def match_store_channels(
    images: list[Image], meta: dict, cfg: EmbedConfig
) -> tuple[list[str], list[int] | None]:
    """Channels to embed (model-checked per store) and the channel selection of every image."""
    from cellfm.data.channels import match_channels

    chosen, ids = None, None
    for im in {im.uri: im for im in images}.values():
        names, ids = resolve_channels(meta, im.stored_channel_names, cfg.channels or chosen, im.uri)
        chosen = chosen or names
    match_channels(images, chosen)
    return chosen, ids


def labels_for(images: list[Image], cfg: EmbedConfig) -> list[Image | None]:
    """Each field's labels image at the image's level, its shape checked against the image."""
    if cfg.level != "cell":
        return [None] * len(images)
    out = []
    for im in images:
        lab = im.labels_image(cfg.labels)
        lab.level = im.level
        lc, lh, lw = lab.level_shape()
        _, h, w = im.shape
        if (lh, lw) != (h, w) or lc != 1:
            raise ValueError(
                f"labels {lab.source} has shape {(lc, lh, lw)} but image {im.source} has {(h, w)} pixels "
                f"at level {im.level}; expected one labels channel of the same size"
            )
        out.append(lab)
    return out


def model_digest(model: nn.Module, meta: dict) -> str:
    """The checkpoint's sha256, or a hash of the weights of a module built in Python."""
    if meta.get("sha256"):
        return meta["sha256"]
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return "weights:" + digest.hexdigest()


def run_fields(spec: JobSpec, indices: list[int], on_field: Any = None) -> int:
    """Embed fields `indices` of the spec into its row store (and patch store); returns fields written."""
    import torch

    from cellfm.transforms import Normalize

    from .patch_store import write_patch_map

    if spec.threads:
        torch.set_num_threads(spec.threads)
    model = load_model(spec.model)
    encoder = Encoder(model, spec.channels, spec.channel_ids, spec.cfg.device, spec.cfg.amp,
                      spec.normalization["output"], int8=spec.cfg.int8, cls_tta=spec.cfg.cls_tta)  # fmt: skip
    input_norm = Normalize(**spec.normalization["input"])
    rows = RowStore(spec.rows)
    jobs = ((i, spec.images[i], spec.labels[i]) for i in indices)
    count = 0
    for result in embed_fields(
        jobs, encoder, spec.cfg, input_norm, want_patches=spec.patch_store is not None
    ):
        if spec.patch_store is not None and result.skipped is None:
            info = spec.plan[result.index]
            write_patch_map(spec.patch_store, result.index, result.patch_map,
                            {"plate": info.plate, "well": info.well, "field": info.field, "source": info.source},
                            encoder.patch_size, result.shape)  # fmt: skip
        rows.write(result)  # last: its presence marks the field complete
        count += 1
        if on_field is not None:
            on_field(1)
    return count


def _chunks(items: list[int], n: int) -> list[list[int]]:
    size = max(1, -(-len(items) // n))
    return [items[i : i + size] for i in range(0, len(items), size)]


def _run_distributed(spec: JobSpec, pending: list[int], client: Any, workers: int, bar: Any) -> None:
    from dask.distributed import as_completed

    n_workers = max(1, len(client.scheduler_info().get("workers", {})) or workers)
    chunks = _chunks(pending, n_workers * 4)
    spec_future = client.scatter(spec, broadcast=True)
    futures = {client.submit(run_fields, spec_future, chunk, pure=False): chunk for chunk in chunks}
    for future in as_completed(futures):
        bar.update(future.result())


def embed(
    stores: str | os.PathLike | list,
    model: str | os.PathLike | nn.Module | None = None,
    output: str | os.PathLike | None = None,
    *,
    config: EmbedConfig | None = None,
    metadata: str | os.PathLike | None = None,
    patch_features: str | os.PathLike | None = None,
    workers: int = 1,
    client: Any = None,
    overwrite: bool = False,
    progress: bool = False,
    **options: Any,
):
    """Embed every field / tile / cell of `stores` with `model`; returns the AnnData.

    With `output` (.h5ad or .zarr) the result is written there (resumably: rows go to
    `<output>.parts/` first) and read back; `options` are `EmbedConfig` fields.
    """
    import anndata as ad

    # Without an output the rows go to a temporary .h5ad that is read back before it is removed.
    with tempfile.TemporaryDirectory(prefix="cellfm-embed-") if output is None else nullcontext() as tmp:
        target = Path(tmp) / "embedding.h5ad" if output is None else output
        path = run_embed(stores, model, target, config=config, metadata=metadata, patch_features=patch_features,
                         workers=workers, client=client, overwrite=overwrite, progress=progress, **options)  # fmt: skip
        return ad.read_h5ad(path) if output_kind(path) == "h5ad" else ad.read_zarr(path)


def run_embed(
    stores: str | os.PathLike | list,
    model: str | os.PathLike | nn.Module | None,
    output: str | os.PathLike,
    **kwargs: Any,
) -> Path:
    """`embed` without reading the result back; returns the output path. One job per output at a time
    (`OUT.lock`); see `_run_embed` for the options."""
    from cellfm.locking import exclusive

    with exclusive(output, "cellfm embed"):
        return _run_embed(stores, model, output, **kwargs)


def _run_embed(
    stores: str | os.PathLike | list,
    model: str | os.PathLike | nn.Module | None,
    output: str | os.PathLike,
    *,
    config: EmbedConfig | None = None,
    metadata: str | os.PathLike | None = None,
    patch_features: str | os.PathLike | None = None,
    workers: int = 1,
    client: Any = None,
    overwrite: bool = False,
    progress: bool = False,
    **options: Any,
) -> Path:
    """`embed` without reading the result back; returns the output path."""
    from .metadata import check_wells, read_well_metadata

    cfg = replace(config, **options) if config is not None else EmbedConfig(**options)
    output = Path(output)
    output_kind(output)
    if output.exists() and not overwrite:
        raise ValueError(f"{output}: already exists; pass overwrite (--overwrite) to replace it")
    stores = [str(s) for s in (stores if isinstance(stores, list | tuple) else [stores])]
    # -- check every input before any work ------------------------------------------------------
    net = load_model(model)
    meta = model_metadata(net)
    images, plan = plan_fields(stores, cfg)
    channels, ids = match_store_channels(images, meta, cfg)
    labels = labels_for(images, cfg)
    wells_meta = None
    if metadata is not None:
        wells_meta = read_well_metadata(metadata)
        check_wells(wells_meta, sorted({(p.plate, p.well) for p in plan}), metadata)
    norm = cfg.normalization or default_normalization(meta)
    encoder = Encoder(net, channels, ids, cfg.device, cfg.amp, norm["output"], cls_tta=cfg.cls_tta)
    names, feature_channels = encoder.feature_names()
    signature = {"stores": stores, "fields": [p.source for p in plan], "config": cfg.to_dict(),
                 "model": model_digest(net, meta), "channels": channels, "normalization": norm,
                 "patch_features": str(patch_features) if patch_features else None}  # fmt: skip
    # -- run the fields not yet done -------------------------------------------------------------
    rows = RowStore(f"{output}.parts")
    resumed = rows.open(signature, overwrite=overwrite)
    if patch_features is not None:
        from .patch_store import create_patch_store

        create_patch_store(patch_features, signature, [p.__dict__ for p in plan], names, encoder.patch_size,
                           overwrite=overwrite or not resumed)  # fmt: skip
    pending = [i for i in range(len(plan)) if i not in rows.done()]
    if resumed:
        log.info("resuming %s: %d of %d fields already done", rows.path, len(plan) - len(pending), len(plan))
    spec = JobSpec(model if isinstance(model, nn.Module) or workers > 1 or client else net, cfg, images,
                   labels, plan, channels, ids, norm, str(rows.path),
                   str(patch_features) if patch_features else None)  # fmt: skip
    _execute(spec, pending, workers, client, progress)
    # -- write the AnnData -----------------------------------------------------------------------
    done = rows.done()
    if len(done) != len(plan):
        raise RuntimeError(f"{rows.path}: {len(plan) - len(done)} fields did not finish")
    parts = [rows.part_info(i) for i in range(len(plan))]  # (rows, writer pid) per field
    counts = [n for n, _ in parts]
    if sum(counts) == 0:
        raise ValueError(f"{stores}: no rows to write (level {cfg.level!r}; no objects in any labels image?)")
    var = pd.DataFrame({"channel": pd.Categorical(feature_channels), "feature": np.tile(
        np.arange(encoder.embed_dim), len(names) // encoder.embed_dim)}, index=names)  # fmt: skip
    uns = {"cellfm": provenance(meta, cfg, encoder, channels, norm, stores, signature["model"],
                                empty_wells(stores, plan, counts), patch_features)}  # fmt: skip
    uns["cellfm"]["worker_processes"] = len({pid for _, pid in parts})  # over all runs of a resumed job
    uns["cellfm"]["skipped"] = skipped_table([rows.skipped(i) for i in range(len(plan))])
    # X (float32) plus obs: refuse up front rather than fail (or crash in HDF5) on a full disk
    check_free_space(output, sum(counts) * (len(names) * 4 + 256) + (1 << 20))
    try:
        path = write_anndata(rows, plan, var, uns, output, wells_meta)
    except OSError as err:
        raise write_failed(output, err) from err
    rows.remove()
    return path


def _execute(spec: JobSpec, pending: list[int], workers: int, client: Any, progress: bool) -> None:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(pending), disable=not progress, unit="field", desc="cellfm embed")
    try:
        if not pending:
            return
        if client is None and workers <= 1:
            run_fields(spec, pending, bar.update)
            return
        if client is not None:
            _run_distributed(spec, pending, client, workers, bar)
            return
        from dask.distributed import Client, LocalCluster

        threads = max(1, (os.cpu_count() or 1) // workers)
        spec = replace(spec, threads=threads)
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) \
                as cluster, Client(cluster) as local:  # fmt: skip
            _run_distributed(spec, pending, local, workers, bar)
    finally:
        bar.close()
