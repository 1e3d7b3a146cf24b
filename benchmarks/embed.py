"""Embedding throughput: cellfm embed vs a plain per-image loop over the official DINOv2 ViT-S/14 on the
same real sample images, and peak memory from 10 to 100 fields.

python benchmarks/embed.py          # 24 fields of 224 x 224 (crops of the sample images), 12 full-size
                                    # sample images (511-660 px), 3 nuclei fields
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


def full_size_fields(n: int, crop: int | None = None) -> list[np.ndarray]:
    """n of the real sample images at their own size (in turn), optionally cropped to crop x crop."""
    images = list(training_images().values())
    return [images[i % len(images)][:crop, :crop] for i in range(n)]


def field_case(official, store: str, model_path: str, prefix: Path) -> dict:
    """Seconds for the plain loop, cellfm fp32 and cellfm --int8 on the fields of `store`, and how
    close cellfm's CLS vectors are to the official ones."""
    import anndata as ad

    t_plain, ref = plain_fields(official, store)
    out = {"plain_s": t_plain}
    for key, int8 in (("cellfm", False), ("int8", True)):
        t0 = time.perf_counter()
        path = run_embed(store, model_path, f"{prefix}_{key}.h5ad", tile_size=1024, batch_size=8, int8=int8)
        out[f"{key}_s"] = time.perf_counter() - t0
        x = ad.read_h5ad(path).X
        if int8:
            cos = (x * ref).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(ref, axis=1)
            out["cos_int8"] = float(cos.min())
        else:
            out["max_diff"] = float(np.abs(x - ref).max())
    return out


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
    n_full = 2 if args.tiny else 12
    tmp = Path(tempfile.mkdtemp(prefix="cellfm-bench-embed-"))
    official = official_vits14()
    weights = tmp / "vits14.pth"
    torch.save(official.state_dict(), weights)
    store = write_fields(tmp / "fields.ome.zarr", sample_crops(size, n_fields))
    full_images = full_size_fields(n_full, 140 if args.tiny else None)
    full_store = write_fields(tmp / "full.ome.zarr", full_images)
    stack, masks = heldout_nuclei()
    zs = [30] if args.tiny else [20, 30, 40]
    cells_store = write_fields(tmp / "cells.ome.zarr", [stack[z] for z in zs], [masks[z] for z in zs])
    # cellfm loads the same weights (3 -> 1 channel by the mean-filter rule: equal output on grey images)
    from cellfm.checkpoints import load_backbone, save_backbone

    model_path = str(save_backbone(load_backbone(weights, in_chans=1), tmp / "vits14_grey.safetensors",
                                   channel_names=["DNA"]))  # fmt: skip
    plain_fields(official, store)  # warm-up (allocator, threads) for both paths
    crops = field_case(official, store, model_path, tmp / "crops")
    full = field_case(official, full_store, model_path, tmp / "full")
    import anndata as ad

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
    shapes = sorted({f"{im.shape[0]}x{im.shape[1]}" for im in full_images})
    rows = [
        (f"fields/s, {size} px crops", "plain DINOv2 loop", n_fields / crops["plain_s"]),
        (f"fields/s, {size} px crops", "cellfm embed (field, cls)", n_fields / crops["cellfm_s"]),
        (f"fields/s, {size} px crops", "cellfm embed --int8 (field, cls)", n_fields / crops["int8_s"]),
        ("fields/s, full size", "plain DINOv2 loop", n_full / full["plain_s"]),
        ("fields/s, full size", "cellfm embed (field, cls)", n_full / full["cellfm_s"]),
        ("fields/s, full size", "cellfm embed --int8 (field, cls)", n_full / full["int8_s"]),
        ("cells/s", "plain DINOv2 loop + mask mean", n_cells / tc_plain),
        ("cells/s", "cellfm embed (cell, mask_bilinear)", cells.n_obs / tc_cellfm),
        ("cells/s", "cellfm embed --int8 (cell, mask_bilinear)", cells8.n_obs / tc_int8),
    ]
    print(f"ViT-S/14, {args.threads} CPU threads; {n_fields} fields of {size}x{size} cropped from the sample "
          f"images; {n_full} full-size sample images ({', '.join(shapes)}); {n_cells} nuclei in {n_nuclei} "
          "fields of 256x256")  # fmt: skip
    print(f"{'metric':24s} {'method':44s} {'rate':>9s} {'vs plain':>9s}")
    for i, (metric, method, rate) in enumerate(rows):
        print(f"{metric:24s} {method:44s} {rate:9.2f} {rate / rows[i - i % 3][2]:8.2f}x")
    speed = {name: rows[i + 1][2] / rows[i][2] for name, i in (("crops", 0), ("full", 3), ("cells", 6))}
    speed8 = {name: rows[i + 2][2] / rows[i][2] for name, i in (("crops", 0), ("full", 3), ("cells", 6))}
    print(f"fp32 vs official CLS: max abs diff {crops['max_diff']:.2e} (crops), {full['max_diff']:.2e} (full size); "
          f"int8 CLS cosine to official fp32 >= {min(crops['cos_int8'], full['cos_int8']):.5f}")  # fmt: skip
    print(f"peak RSS: {mem[0]} fields {rss[mem[0]]:.0f} MiB, {mem[1]} fields {rss[mem[1]]:.0f} MiB")
    result = {
        "device": "cpu", "threads": args.threads, "torch": torch.__version__, "machine": platform.machine(),
        "field_size": size, "n_fields": n_fields, "full_size_fields": shapes, "n_full": n_full,
        "n_cells": n_cells, "cells_match": cells.n_obs == n_cells,
        "rows": [{"metric": m, "method": k, "rate": r} for m, k, r in rows],
        "speedup_fp32": speed, "speedup_int8": speed8,
        "max_abs_diff_cls": max(crops["max_diff"], full["max_diff"]),
        "min_cls_cosine_int8": min(crops["cos_int8"], full["cos_int8"]),
        "peak_rss_mib": {str(k): v for k, v in rss.items()},
    }  # fmt: skip
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    name = "embed_tiny.json" if args.tiny else "embed.json"
    (out_dir / name).write_text(json.dumps(result, indent=1))
    print(f"saved {out_dir / name}")


if __name__ == "__main__":
    main()
