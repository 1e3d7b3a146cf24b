"""Curation at scale on a synthetic plate (tiny model): embedding rows/s of the tile-level embedding that
`cellfm curate` runs, then duplicate search and hierarchical k-means time and peak memory as the number of
tiles doubles (rows beyond the embedded ones are the embedded features plus noise), and the aligned
copy-detection check of the duplicate candidates.

python benchmarks/curate.py          # embed 2,560 and 5,120 tiles; dedup / k-means 5k to 40k tiles
python benchmarks/curate.py --tiny   # CI smoke: 128 / 256 tiles embedded, 500 / 1,000 rows
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import PeakRSS, machine, save, table  # noqa: E402

from cellfm.checkpoints import save_backbone  # noqa: E402
from cellfm.data.writer import create_plate, write_image  # noqa: E402
from cellfm.models import VisionTransformer, ViTArch  # noqa: E402

TILE = 64


def synthetic_plate(path: Path, fields: int, size: int, seed: int = 0) -> str:
    """Fields of blurred random blobs plus noise (uint16), one per well."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    wells = {f"{chr(65 + i // 24)}/{i % 24 + 1}": ["0"] for i in range(fields)}
    root = create_plate(str(path), "synthetic", wells, "0.4", mode="w")
    for well in wells:
        img = ndimage.gaussian_filter((rng.random((size, size)) > 0.995).astype(np.float32), 3) * 4e5
        img = np.clip(img + rng.normal(200, 20, img.shape), 0, 65535).astype(np.uint16)
        write_image(root[well].require_group("0"), img[None], ["DNA"], "0.4", chunk=size, min_level_size=size)
    return str(path)


def tiny_model(path: Path) -> str:
    torch.manual_seed(0)
    model = VisionTransformer(
        ViTArch(embed_dim=64, depth=2, num_heads=2, patch_size=8, img_size=TILE, in_chans=1)
    )
    return str(save_backbone(model, path, channel_names=["DNA"]))


def embed_case(tmp: Path, model: str, fields: int, size: int) -> tuple[dict, np.ndarray]:
    import anndata as ad

    from cellfm.embed import run_embed

    store = synthetic_plate(tmp / f"plate{fields}.ome.zarr", fields, size)
    out = tmp / f"emb{fields}.h5ad"
    start = time.perf_counter()
    run_embed(store, model, out, level="tile", tile_size=TILE, overlap=0, batch_size=64)
    seconds = time.perf_counter() - start
    X = np.asarray(ad.read_h5ad(out).X)
    return {"tiles": len(X), "embed_s": seconds, "rows_per_s": len(X) / seconds}, X


def window_descriptors(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Low-pass descriptors and alignment thumbnails of `n` synthetic 64 px tiles (blobs plus noise)."""
    from scipy import ndimage

    from cellfm.curate.copydetect import alignment_thumbnails, image_descriptor

    rng = np.random.default_rng(seed)
    image, thumbs = [], []
    for _ in range(n):
        tile = ndimage.gaussian_filter((rng.random((TILE, TILE)) > 0.99).astype(np.float32), 3) * 4e5
        tile = (tile + rng.normal(200, 20, tile.shape))[None]
        image.append(image_descriptor(tile))
        thumbs.append(alignment_thumbnails(tile))
    return np.stack(image), np.stack(thumbs)


def copy_check_case(base: np.ndarray, windows: tuple[np.ndarray, np.ndarray], n: int) -> dict:
    """`copy_groups` (faiss candidates + the aligned check) on `n` rows drawn from the embedded tiles
    with their window descriptors: drawn twice, a tile is a duplicate (the worst case: many checks)."""
    from cellfm.curate.config import CurateConfig
    from cellfm.curate.copydetect import combine, copy_groups
    from cellfm.curate.dedup import duplicate_groups

    rng = np.random.default_rng(n)
    pick = rng.integers(0, len(base), n)
    x = base[pick] + rng.normal(0, 0.05, (n, base.shape[1])).astype(np.float32)
    image, thumbs = windows[0][pick], windows[1][pick]
    checks = [0]
    cfg = CurateConfig()
    start = time.perf_counter()  # the candidate search alone (faiss over the combined descriptors)
    duplicate_groups(combine(image, x, cfg.image_weight), cfg.candidate_threshold, cfg.neighbours)
    candidates_s = time.perf_counter() - start
    with PeakRSS() as mem:
        start = time.perf_counter()
        _, pairs = copy_groups(image, x, thumbs, cfg, counter=checks)
        seconds = time.perf_counter() - start
    check_s = max(seconds - candidates_s, 0.0)
    return {"rows": n, "candidates_s": candidates_s, "check_s": check_s, "pairs_checked": checks[0],
            "duplicate_pairs": pairs, "ms_per_check": 1e3 * check_s / max(checks[0], 1), "peak_mb": mem.delta_mb,
            "thumbs_mb": thumbs.nbytes / 2**20}  # fmt: skip


def index_case(base: np.ndarray, n: int) -> dict:
    from cellfm.curate.dedup import duplicate_groups
    from cellfm.curate.kmeans import default_levels, hierarchical_kmeans
    from cellfm.curate.rebalance import balanced_weights

    rng = np.random.default_rng(n)
    x = base[rng.integers(0, len(base), n)] + rng.normal(0, 0.05, (n, base.shape[1])).astype(np.float32)
    with PeakRSS() as mem_dedup:
        start = time.perf_counter()
        duplicate_groups(x, 0.99, 16)
        dedup_s = time.perf_counter() - start
    with PeakRSS() as mem_km:
        start = time.perf_counter()
        hier = hierarchical_kmeans(x, default_levels(n), iters=10, resample_steps=2)
        balanced_weights(hier, n / 2)
        kmeans_s = time.perf_counter() - start
    return {"rows": n, "dedup_s": dedup_s, "dedup_peak_mb": mem_dedup.delta_mb, "kmeans_s": kmeans_s,
            "kmeans_peak_mb": mem_km.delta_mb, "input_mb": x.nbytes / 2**20}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    size = 256 if args.tiny else 512  # 16 or 64 tiles of 64 px per field
    embed_fields = (8, 16) if args.tiny else (40, 80)
    rows = (500, 1000) if args.tiny else (5000, 10000, 20000, 40000)
    with tempfile.TemporaryDirectory(prefix="cellfm-bench-curate-") as tmp:
        tmp = Path(tmp)
        model = tiny_model(tmp / "tiny.safetensors")
        embed_rows, base = [], None
        for n in embed_fields:
            row, base = embed_case(tmp, model, n, size)
            embed_rows.append(row)
    print("tile embedding (tiny ViT, 64 px tiles, 2 threads; shared machine: compare rows, not runs)")
    print(table(embed_rows, ["tiles", "embed_s", "rows_per_s"]))
    index_rows = [index_case(base, n) for n in rows]
    print("\nduplicate search (faiss, exact up to 20k rows, HNSW above) and hierarchical k-means")
    print(table(index_rows, ["rows", "dedup_s", "dedup_peak_mb", "kmeans_s", "kmeans_peak_mb", "input_mb"]))
    windows = window_descriptors(len(base))
    check_rows = [
        copy_check_case(base, windows, n) for n in ((250, 500) if args.tiny else (2500, 5000, 10000))
    ]
    print("\ncopy detection: faiss candidates (cosine >= 0.5) confirmed by the aligned thumbnail check")
    print(table(check_rows, ["rows", "candidates_s", "check_s", "pairs_checked", "duplicate_pairs", "ms_per_check",
                             "peak_mb", "thumbs_mb"]))  # fmt: skip
    path = save("curate", {"machine": machine(), "embed": embed_rows, "index": index_rows,
                           "copy_check": check_rows}, args.tiny)  # fmt: skip
    print(f"saved {path}")


if __name__ == "__main__":
    main()
