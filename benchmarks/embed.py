"""Embedding throughput: cellfm embed vs a plain per-image loop over the official DINOv2 ViT-S/14 on the
same real sample images, and peak memory from 10 to 100 fields.

python benchmarks/embed.py          # 24 fields of 224 x 224 (crops of the sample images), 3 nuclei fields
python benchmarks/embed.py --tiny   # CI smoke: 4 fields of 112 x 112, 1 nuclei field, 4 vs 12 fields memory
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from cellfm.transforms import Normalize

from cellfm.data.samples import heldout_nuclei, training_images
from cellfm.data.writer import create_plate, with_version, write_image
from cellfm.embed import run_embed

MEM_SCRIPT = """
import resource, sys
from cellfm.embed import run_embed
run_embed(sys.argv[1], sys.argv[2], sys.argv[3], tile_size=1024, batch_size=8)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def official_vits14():
    """The official DINOv2 ViT-S/14 module (random weights: speed does not depend on them)."""
    from dinov2.models.vision_transformer import vit_small

    torch.manual_seed(0)
    return vit_small(patch_size=14, img_size=518, init_values=1.0, block_chunks=0).eval()


def sample_crops(size: int, n: int) -> list[np.ndarray]:
    """n (size, size) uint16 crops from the real training sample images, in turn."""
    images = list(training_images().values())
    crops = []
    for i in range(n):
        img = images[i % len(images)]
        k = i // len(images)
        y = (k * size // 2) % max(1, img.shape[0] - size)
        x = (k * size // 3) % max(1, img.shape[1] - size)
        crops.append(img[y : y + size, x : x + size])
    return crops


def write_fields(path: Path, images: list[np.ndarray], labels: list[np.ndarray] | None = None) -> str:
    wells = {f"{'ABCDEFGHIJKLMNOP'[i // 12]}/{i % 12 + 1}": ["0"] for i in range(len(images))}
    root = create_plate(str(path), path.stem.split(".")[0], wells, "0.4")
    for i, well in enumerate(wells):
        grp = root[well].require_group("0")
        write_image(grp, images[i][None], ["DNA"], "0.4", chunk=256, min_level_size=4096)
        if labels is not None:
            lg = grp.require_group("labels")
            lg.attrs.update(with_version("0.4", {"labels": ["nuclei"]}))
            write_image(
                lg.require_group("nuclei"), labels[i][None], ["nuclei"], "0.4", chunk=256, min_level_size=4096
            )
    return str(path)


def prepare(img: np.ndarray) -> torch.Tensor:
    """What both paths feed the model: percentile-normalised field, zero-padded to the patch grid, z-scored."""
    x = Normalize("percentile")(torch.from_numpy(img.astype(np.int32))[None, None])
    x = torch.nn.functional.pad(x, (0, (-x.shape[-1]) % 14, 0, (-x.shape[-2]) % 14))
    return Normalize("zscore", eps=0.01)(x)


@torch.inference_mode()
def plain_fields(model, store: str) -> tuple[float, np.ndarray]:
    """Per-image loop: read, normalise, replicate to RGB, one forward each."""
    from cellfm.data import list_fields

    t0 = time.perf_counter()
    out = []
    for image in list_fields(store):
        x = prepare(image.read_full()[0]).expand(-1, 3, -1, -1)
        out.append(model.forward_features(x)["x_norm_clstoken"][0].numpy())
    return time.perf_counter() - t0, np.stack(out)


@torch.inference_mode()
def plain_cells(model, store: str) -> tuple[float, int]:
    """Per-image loop for cells: patch tokens upsampled bilinearly, averaged inside each mask."""
    from cellfm.data import list_fields

    t0 = time.perf_counter()
    n = 0
    for image in list_fields(store):
        img = image.read_full()[0]
        lab = image.labels_image("nuclei").read_full()[0]
        x = prepare(img).expand(-1, 3, -1, -1)
        tokens = model.forward_features(x)["x_norm_patchtokens"][0]
        gh, gw = x.shape[-2] // 14, x.shape[-1] // 14
        fmap = tokens.T.reshape(1, -1, gh, gw)
        up = torch.nn.functional.interpolate(fmap, size=x.shape[-2:], mode="bilinear", align_corners=False)
        up = up[0, :, : img.shape[0], : img.shape[1]]
        for v in np.unique(lab)[1:]:
            mask = torch.from_numpy(lab == v)
            up[:, mask].mean(1)
            n += 1
    return time.perf_counter() - t0, n


def peak_rss(store: str, model: str, out: str) -> float:
    res = subprocess.run(
        [sys.executable, "-c", MEM_SCRIPT, store, model, out], capture_output=True, text=True
    )
    if res.returncode:
        raise RuntimeError(res.stderr[-2000:])
    return int(res.stdout.split()[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CI smoke run")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    size, n_fields, n_nuclei, mem = (112, 4, 1, (4, 12)) if args.tiny else (224, 24, 3, (10, 100))
    tmp = Path(tempfile.mkdtemp(prefix="cellfm-bench-embed-"))
    official = official_vits14()
    weights = tmp / "vits14.pth"
    torch.save(official.state_dict(), weights)
    store = write_fields(tmp / "fields.ome.zarr", sample_crops(size, n_fields))
    stack, masks = heldout_nuclei()
    zs = [30] if args.tiny else [20, 30, 40]
    cells_store = write_fields(tmp / "cells.ome.zarr", [stack[z] for z in zs], [masks[z] for z in zs])
    # cellfm loads the same weights (3 -> 1 channel by the mean-filter rule: equal output on grey images)
    from cellfm.checkpoints import load_backbone, save_backbone

    model_path = str(save_backbone(load_backbone(weights, in_chans=1), tmp / "vits14_grey.safetensors",
                                   channel_names=["DNA"]))  # fmt: skip
    plain_fields(official, store)  # warm-up (allocator, threads) for both paths
    t_plain, ref = plain_fields(official, store)
    t0 = time.perf_counter()
    out = run_embed(store, model_path, tmp / "f.h5ad", tile_size=1024, batch_size=8)
    t_cellfm = time.perf_counter() - t0
    import anndata as ad

    max_diff = float(np.abs(ad.read_h5ad(out).X - ref).max())
    t0 = time.perf_counter()
    out8 = run_embed(store, model_path, tmp / "f8.h5ad", tile_size=1024, batch_size=8, int8=True)
    t_int8 = time.perf_counter() - t0
    x8 = ad.read_h5ad(out8).X
    cos_int8 = float(((x8 * ref).sum(1) / np.linalg.norm(x8, axis=1) / np.linalg.norm(ref, axis=1)).min())
    tc_plain, n_cells = plain_cells(official, cells_store)
    t0 = time.perf_counter()
    cells = ad.read_h5ad(run_embed(cells_store, model_path, tmp / "c.h5ad", level="cell",
                                   pooling="mask_bilinear", tile_size=1024, batch_size=8))  # fmt: skip
    tc_cellfm = time.perf_counter() - t0
    t0 = time.perf_counter()
    cells8 = ad.read_h5ad(run_embed(cells_store, model_path, tmp / "c8.h5ad", level="cell",
                                    pooling="mask_bilinear", tile_size=1024, batch_size=8, int8=True))  # fmt: skip
    tc_int8 = time.perf_counter() - t0
    mem_store = write_fields(tmp / "mem.ome.zarr", sample_crops(size, mem[1]))
    few = write_fields(tmp / "few.ome.zarr", sample_crops(size, mem[0]))
    rss = {mem[0]: peak_rss(few, model_path, str(tmp / "m0.h5ad")),
           mem[1]: peak_rss(mem_store, model_path, str(tmp / "m1.h5ad"))}  # fmt: skip
    rows = [
        ("fields/s", "plain DINOv2 loop", n_fields / t_plain),
        ("fields/s", "cellfm embed (field, cls)", n_fields / t_cellfm),
        ("fields/s", "cellfm embed --int8 (field, cls)", n_fields / t_int8),
        ("cells/s", "plain DINOv2 loop + mask mean", n_cells / tc_plain),
        ("cells/s", "cellfm embed (cell, mask_bilinear)", cells.n_obs / tc_cellfm),
        ("cells/s", "cellfm embed --int8 (cell, mask_bilinear)", cells8.n_obs / tc_int8),
    ]
    print(f"ViT-S/14, {args.threads} CPU threads, {n_fields} fields of {size}x{size}, "
          f"{n_cells} nuclei in {n_nuclei} fields of 256x256")  # fmt: skip
    print(f"{'metric':10s} {'method':44s} {'rate':>9s}")
    for metric, method, rate in rows:
        print(f"{metric:10s} {method:44s} {rate:9.2f}")
    speed_f, speed_c = rows[1][2] / rows[0][2], rows[4][2] / rows[3][2]
    speed_f8, speed_c8 = rows[2][2] / rows[0][2], rows[5][2] / rows[3][2]
    print(f"speed-up fp32: fields {speed_f:.2f}x, cells {speed_c:.2f}x; int8: fields {speed_f8:.2f}x, "
          f"cells {speed_c8:.2f}x (target 1.5x)")  # fmt: skip
    print(f"max |cellfm - official| CLS = {max_diff:.2e}; int8 CLS cosine to official fp32 >= {cos_int8:.5f}")
    print(f"peak RSS: {mem[0]} fields {rss[mem[0]]:.0f} MiB, {mem[1]} fields {rss[mem[1]]:.0f} MiB")
    result = {
        "device": "cpu", "threads": args.threads, "torch": torch.__version__, "machine": platform.machine(),
        "field_size": size, "n_fields": n_fields, "n_cells": n_cells, "cells_match": cells.n_obs == n_cells,
        "rows": [{"metric": m, "method": k, "rate": r} for m, k, r in rows],
        "speedup_fields": speed_f, "speedup_cells": speed_c, "max_abs_diff_cls": max_diff,
        "speedup_fields_int8": speed_f8, "speedup_cells_int8": speed_c8, "min_cls_cosine_int8": cos_int8,
        "peak_rss_mib": {str(k): v for k, v in rss.items()},
    }  # fmt: skip
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    name = "embed_tiny.json" if args.tiny else "embed.json"
    (out_dir / name).write_text(json.dumps(result, indent=1))
    print(f"saved {out_dir / name}")


if __name__ == "__main__":
    main()
