"""PNG plots: UMAP coloured by obs columns, and PCA-to-RGB images of patch features (DINOv2 Fig. 1 style)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_umap(adata, out_dir: str | os.PathLike, colors: Sequence[str] = ("well", "treatment", "plate"),
              basis: str = "X_umap") -> list[Path]:  # fmt: skip
    """One PNG per obs column in `colors` that exists; returns the files written."""
    if basis not in adata.obsm:
        raise KeyError(f"no {basis!r} in obsm; run cellfm.analysis.cluster first")
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    xy = np.asarray(adata.obsm[basis])[:, :2]
    written = []
    for key in colors:
        if key not in adata.obs:
            continue
        values = adata.obs[key].astype(str).to_numpy()
        cats = sorted(set(values))
        cmap = plt.get_cmap("tab20" if len(cats) > 10 else "tab10")
        fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=100)
        for i, cat in enumerate(cats):
            sel = values == cat
            ax.scatter(xy[sel, 0], xy[sel, 1], s=8, color=cmap(i % cmap.N), label=cat, linewidths=0)
        if len(cats) <= 20:
            ax.legend(fontsize=6, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5), frameon=False)
        ax.set(title=f"UMAP coloured by {key}", xticks=[], yticks=[], xlabel="UMAP1", ylabel="UMAP2")
        fig.tight_layout()
        path = out_dir / f"umap_{key}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def pca_rgb(features: np.ndarray, foreground: bool = False) -> np.ndarray:
    """(gh, gw, F) patch features -> (gh, gw, 3) RGB in [0, 1] from the first three principal components.

    With `foreground`, patches on the low side of the first component's median-split are set to black
    and the colours come from a PCA of the remaining patches, as in the DINOv2 paper's figure.
    """
    gh, gw, f = features.shape
    flat = features.reshape(-1, f).astype(np.float64)
    keep = np.ones(len(flat), dtype=bool)
    if foreground:
        first = _pcs(flat, 1)[:, 0]
        keep = first > np.median(first)
    rgb = np.zeros((len(flat), 3))
    if keep.sum() >= 2:
        comps = _pcs(flat[keep], 3)
        lo, hi = np.percentile(comps, 1, axis=0), np.percentile(comps, 99, axis=0)
        rgb[keep] = np.clip((comps - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
    return rgb.reshape(gh, gw, 3)


def _pcs(x: np.ndarray, k: int) -> np.ndarray:
    x = x - x.mean(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    pcs = u[:, :k] * s[:k]
    if pcs.shape[1] < k:  # fewer features than components
        pcs = np.pad(pcs, ((0, 0), (0, k - pcs.shape[1])))
    return pcs


def plot_patch_pca(store: str | os.PathLike, out_dir: str | os.PathLike, fields: Sequence[int] | None = None,
                   max_fields: int = 16, foreground: bool = False, scale: int = 8) -> list[Path]:  # fmt: skip
    """PCA-to-RGB PNG of each field's patch features from a patch-feature store."""
    from cellfm.embed.patch_store import read_header, read_patch_map

    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    header = read_header(store)
    fields = list(range(len(header["fields"])))[:max_fields] if fields is None else list(fields)
    written = []
    for i in fields:
        feats, _, _, info = read_patch_map(store, i)
        rgb = np.repeat(np.repeat(pca_rgb(feats, foreground), scale, 0), scale, 1)
        name = "_".join(str(info.get(k, "")) for k in ("plate", "well", "field")).strip("_") or str(i)
        path = out_dir / f"patch_pca_{i:04d}_{name.replace('/', '-')}.png"
        plt.imsave(path, rgb)
        written.append(path)
    return written
