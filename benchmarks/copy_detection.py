"""Copy detection on the real-image curation plate (tests/curate_plate.py, shipped model): recall and
precision per injected duplicate kind, over the candidate descriptor (pooled patch features, low-pass
image descriptor, weighted combinations), the candidate cosine and the aligned-correlation threshold,
with and without the alignment check. Chosen on the dev plate (seed 0, dev images), checked unchanged on
held-out plates (other seeds, other images).

python benchmarks/copy_detection.py          # dev plate + 2 held-out plates, full size
python benchmarks/copy_detection.py --tiny   # CI smoke: small plates
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
from _common import machine, save, table  # noqa: E402

from cellfm.curate import qc  # noqa: E402
from cellfm.curate.config import CurateConfig  # noqa: E402
from cellfm.curate.copydetect import RADIUS_FRACTION, aligned_similarity, combine  # noqa: E402
from cellfm.curate.dedup import duplicate_groups  # noqa: E402
from tests.curate_plate import build_plate  # noqa: E402

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
CANDIDATES = (0.5, 0.6, 0.7, 0.8)
THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.80, 0.99, 0.02), 2))
KINDS = ("dup_exact", "dup_noise", "dup_shift", "dup_rescale", "dup_intensity")


def descriptors(plate_dir: Path, **plate_kw):
    """(plate, injected mask, kinds, image and model descriptors) of the QC-passing fields of one plate."""
    import anndata as ad

    from cellfm.curate.job import _embed, measure_rows, row_windows
    from cellfm.embed.config import EmbedConfig
    from cellfm.embed.job import plan_fields

    plate = build_plate(plate_dir / "plate.ome.zarr", **plate_kw)
    cfg = CurateConfig()
    images, plan = plan_fields([plate.path], EmbedConfig(level="field"))
    emb, patches = _embed([plate.path], plate_dir / "out", None, cfg, None, 1, None, False)
    adata = ad.read_h5ad(emb)
    info = adata.uns["cellfm"]
    by_source = {im.source: im for im in images}
    patch = int(info["architecture"]["patch_size"])
    windows = row_windows(adata, by_source, "field", patch, int(info["tile_size"]), int(info["overlap"]))
    measures, desc, image, thumbs = measure_rows(windows, by_source, patches,
                                                 {p.source: i for i, p in enumerate(plan)}, patch, cfg.descriptor_grid)  # fmt: skip
    ok = qc.reasons(measures, cfg.qc) == "ok"
    wells = adata.obs["well"].astype(str).to_numpy()
    ok_wells = set(wells[ok])
    kind = np.array([plate.wells[w] for w in wells])
    # an injected copy counts when it and its original both pass QC (README "Curation")
    injected = np.array(
        [k.startswith("dup_") and plate.duplicate_of[w] in ok_wells for k, w in zip(kind, wells)]
    )
    return kind[ok], injected[ok], image[ok], desc[ok], thumbs[ok], {}


def score(kind, injected, image, model, thumbs, memo, weight: float, candidate: float,
          threshold: float | None) -> dict:  # fmt: skip
    """Recall / precision of one setting; `threshold` None: candidates are duplicates (no alignment check)."""
    radius = max(1, round(RADIUS_FRACTION * thumbs.shape[-1]))

    def verify(i, j):
        if (i, j) not in memo:
            memo[i, j] = aligned_similarity(thumbs[i], thumbs[j], radius)
        return memo[i, j] >= threshold

    dup_of, _ = duplicate_groups(
        combine(image, model, weight), candidate, verify=None if threshold is None else verify
    )
    flagged = dup_of >= 0
    tp = int((flagged & injected).sum())
    row = {"weight": weight, "candidate": candidate, "threshold": threshold, "recall": tp / max(int(injected.sum()), 1),
           "precision": tp / max(int(flagged.sum()), 1), "false_pos": int((flagged & ~injected).sum())}  # fmt: skip
    for k in KINDS:
        sel = injected & (kind == k)
        row[k.removeprefix("dup_")] = float(flagged[sel].mean()) if sel.any() else None
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    size = {"n_distinct": 16, "n_dups": 10, "n_repeats": 4} if args.tiny else {}
    plates = {"dev (seed 0, dev images)": {"seed": 0, "images": "dev"},
              "held-out (seed 1, dev images)": {"seed": 1, "images": "dev"},
              "held-out (seed 2, held-out images)": {"seed": 2, "images": "heldout"},
              "held-out (seed 3, held-out images, zoom 3%, shift <= 4 px)": {"seed": 3, "images": "heldout",
                                                                           "zoom": 1.03, "max_shift": 4},
              "held-out (seed 4, held-out images, zoom 7%)": {"seed": 4, "images": "heldout", "zoom": 1.07}}  # fmt: skip
    if args.tiny:
        plates = dict(list(plates.items())[:3:2])
    data = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, kw) in enumerate(plates.items()):
            data[name] = descriptors(Path(tmp) / str(i), **kw, **size)
    dev = next(iter(data))
    grid = [score(*data[dev], w, c, t) for w in WEIGHTS for c in (*CANDIDATES, *THRESHOLDS)
            for t in (None,)] + [score(*data[dev], w, c, t) for w in WEIGHTS for c in CANDIDATES for t in THRESHOLDS]  # fmt: skip
    cols = ["weight", "candidate", "threshold", "recall", "precision", "false_pos",
            *(k.removeprefix("dup_") for k in KINDS)]  # fmt: skip
    best = []
    for check in (False, True):  # per weight, the best min(recall, precision); ties: the strictest setting
        for w in WEIGHTS:
            rows = [r for r in grid if r["weight"] == w and (r["threshold"] is not None) == check]
            best.append(
                max(
                    rows,
                    key=lambda r: (min(r["recall"], r["precision"]), r["threshold"] or 0, r["candidate"]),
                )
            )
    print(
        f"dev plate {dev}: best setting per image-descriptor weight, without then with the alignment check\n"
    )
    print(table(best, cols))
    cfg = CurateConfig()
    chosen = (cfg.image_weight, cfg.candidate_threshold, cfg.duplicate_threshold)
    checks = [{"plate": name, **score(*d, *chosen)} for name, d in data.items()]
    print(
        f"\nshipped defaults (image_weight {chosen[0]}, candidate cosine {chosen[1]}, aligned correlation "
        f"{chosen[2]}) on every plate\n"
    )
    print(table(checks, ["plate", *cols]))
    thumbs = data[dev][4]
    pairs = [(i, (i * 7 + 3) % len(thumbs)) for i in range(len(thumbs))] * (1 if args.tiny else 5)
    start = time.perf_counter()
    for i, j in pairs:
        aligned_similarity(thumbs[i], thumbs[j])
    speed = {"pairs_per_s": len(pairs) / (time.perf_counter() - start),
             "thumbnail_kb_per_row_channel": thumbs[0].nbytes / thumbs.shape[2] / 1024}  # fmt: skip
    print(
        f"\nalignment check: {speed['pairs_per_s']:.0f} candidate pairs/s (one core, shared machine); "
        f"thumbnails {speed['thumbnail_kb_per_row_channel']:.1f} KB per row and channel"
    )
    path = save("copy_detection", {"machine": machine(), "alignment_speed": speed, "dev_grid": grid,
                                   "best_per_weight": best, "plates": checks,
                                   "defaults": dict(zip(("image_weight", "candidate", "threshold"), chosen))},
                args.tiny)  # fmt: skip
    print(f"saved {path}")


if __name__ == "__main__":
    main()
