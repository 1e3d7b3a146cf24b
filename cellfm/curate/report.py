"""`report.md` of a curation: counts, entropies, cluster sizes before / after, QC histograms, montages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellfm.atomic import atomic_write, atomic_write_text

from .table import summary

QC_PLOTS = (("qc_foreground", "min_foreground", "foreground fraction", False),
            ("qc_focus", "min_focus", "focus (Laplacian var / var)", True),
            ("qc_saturated", "max_saturated", "saturated fraction", False))  # fmt: skip


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight"))
    _pyplot().close(fig)
    return path.name


def thumbnail(images: dict[str, Any], row: pd.Series, size: int = 64) -> np.ndarray:
    """The first channel of a row's window, percentile-scaled to [0, 1] and resized to size x size."""
    from skimage.transform import resize

    y, x, h, w = (int(row[c]) for c in ("y", "x", "height", "width"))
    plane = np.asarray(images[row["source"]].read(y, x, h, w)[0], dtype=np.float32)
    lo, hi = np.percentile(plane, [0.5, 99.5])
    return resize(np.clip((plane - lo) / max(hi - lo, 1e-6), 0, 1), (size, size), anti_aliasing=True)


def montage(rows: list[list[np.ndarray]], titles: list[str], path: Path) -> str:
    """A grid of thumbnails, one titled row per list."""
    plt = _pyplot()
    ncol = max(1, max(len(r) for r in rows))
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.3 * ncol, 1.4 * len(rows)), squeeze=False)
    for i, (row, title) in enumerate(zip(rows, titles)):
        for j in range(ncol):
            ax = axes[i, j]
            ax.axis("off")
            if j < len(row):
                ax.imshow(row[j], cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_title(title, fontsize=7, loc="left")
    return _save(fig, path)


def write_report(out: Path, table: pd.DataFrame, stats: dict, before: np.ndarray, after: np.ndarray,
                 images: dict[str, Any], per_cluster: int = 6, top: int = 6) -> Path:  # fmt: skip
    """Plots under out/report/ and out/report.md."""
    plt = _pyplot()
    pics = out / "report"
    pics.mkdir(exist_ok=True)
    order = np.argsort(-before)
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(np.arange(len(order)), before[order] / max(before.sum(), 1), alpha=0.6, label="before")
    ax.bar(np.arange(len(order)), after[order] / max(after.sum(), 1e-12), alpha=0.6, label="after (weighted)")
    ax.set_xlabel("cluster (by size before)")
    ax.set_ylabel("share of rows")
    ax.legend()
    sizes_png = _save(fig, pics / "cluster_sizes.png")
    fig, axes = plt.subplots(1, len(QC_PLOTS), figsize=(4 * len(QC_PLOTS), 2.8))
    thresholds = stats["config"]["qc"]
    for ax, (col, key, label, log) in zip(axes, QC_PLOTS):
        values = table[col].to_numpy(dtype=float)
        values = np.log10(np.maximum(values, 1e-6)) if log else values
        ax.hist(values, bins=30)
        cut = thresholds[key]
        ax.axvline(np.log10(max(cut, 1e-6)) if log else cut, color="r", ls="--", label=f"{key} = {cut}")
        ax.set_xlabel(f"log10 {label}" if log else label)
        ax.legend(fontsize=7)
    qc_png = _save(fig, pics / "qc_histograms.png")
    kept = table[table["keep"]]
    biggest = kept["cluster"].value_counts().index[:top]
    thumbs, titles = [], []
    for c in biggest:
        members = kept[kept["cluster"] == c]
        thumbs.append([thumbnail(images, r) for _, r in members.head(per_cluster).iterrows()])
        titles.append(f"cluster {c}: {len(members)} rows, weight {members['weight'].sum():.1f}")
    montage_png = montage(thumbs, titles, pics / "top_clusters.png") if thumbs else None
    counts = summary(table)
    lines = ["# Curation report", "", f"Stores: {', '.join(stats['stores'])}", "",
             f"Level: {stats['config']['level']}; k-means levels (clusters, finest first): {stats['levels']}; "
             f"duplicate pairs found: {stats['duplicate_pairs']}", "", "| reason | rows |", "|---|---|"]  # fmt: skip
    lines += [f"| {k} | {v} |" for k, v in counts.items()]
    lines += ["", f"Normalised entropy of the cluster sizes (1 = flat): {stats['entropy_before']:.3f} before "
              f"(all rows passing QC, duplicates included), {stats['entropy_after']:.3f} after (kept rows, "
              "weighted).", "", f"![cluster sizes](report/{sizes_png})", "", f"![QC](report/{qc_png})", ""]  # fmt: skip
    if montage_png:
        lines += [
            f"Examples of the {len(thumbs)} largest kept clusters:",
            "",
            f"![clusters](report/{montage_png})",
        ]
    return atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
