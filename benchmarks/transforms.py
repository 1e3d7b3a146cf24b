"""MultiCrop throughput vs the rate a ViT-S/14 SSL step consumes images, on this machine's CPU.

python benchmarks/transforms.py           # 5 x 512 x 512 uint16 fields -> 2 x 224 + 8 x 96 crops
python benchmarks/transforms.py --tiny    # CI smoke: small fields, tiny crops, 1 timing step

Transforms run single-threaded (one DataLoader worker); the SSL step uses every core. The
consumption estimate times only the student's forward + backward of the backbone on 2 x 224 +
8 x 98 crops per image (no teacher, heads or optimiser), so it overstates the real consumption
rate and makes the ">= 3x" bar stricter than reality.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch
from cellfm.transforms import BlurConfig, ChannelConfig, IntensityConfig, MaskCollator, MultiCrop

from cellfm.models import vit_small


def fields(n: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    """Fluorescence-like uint16 fields: noisy background plus bright blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((n, c, size, size), dtype=np.uint16)
    for i in range(n):
        base = rng.normal(200, 10, (size, size))
        for cy, cx in rng.integers(0, size, (size // 16, 2)):
            base += 3000 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 72.0)
        for ch in range(c):
            out[i, ch] = (base * (1 + 0.2 * ch) + rng.normal(0, 5, base.shape)).clip(0, 65535)
    return torch.from_numpy(out)


def multicrop(args) -> MultiCrop:
    """Cell Painting-like pipeline: percentile in, z-score out, flips/rot90, intensity, blur, drop."""
    return MultiCrop(
        args.global_size,
        args.local_size,
        args.local_number,
        intensity=IntensityConfig(blur=BlurConfig(p_global=(0.2, 0.2), p_local=0.2)),
        channels=ChannelConfig(drop_p=0.2),
        seed=0,
    )


def time_single(mc: MultiCrop, x: torch.Tensor, reps: int) -> float:
    mc(x[0])  # warm-up
    t = time.perf_counter()
    for r in range(reps):
        mc(x[r % len(x)])
    return reps / (time.perf_counter() - t)


def time_batched(mc: MultiCrop, x: torch.Tensor, reps: int) -> float:
    mc.batch(x)
    t = time.perf_counter()
    for _ in range(reps):
        mc.batch(x)
    return reps * len(x) / (time.perf_counter() - t)


def time_collate(mc: MultiCrop, coll: MaskCollator, x: torch.Tensor, reps: int) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        coll([mc(x[i]) for i in range(len(x))])
    return reps * len(x) / (time.perf_counter() - t)


def time_ssl_step(
    batch: int, channels: int, g: int, loc: int, n_local: int, steps: int, depth: int | None
) -> float:
    """Images/s of ViT-S/14 forward + backward on 2 global + n_local local crops per image."""
    kw = {"in_chans": channels}
    if depth is not None:
        kw["depth"] = depth
    model = vit_small(patch_size=14, **kw)
    glob = torch.randn(2 * batch, channels, g, g)
    local = torch.randn(n_local * batch, channels, loc, loc)

    def step():
        model.zero_grad(set_to_none=True)
        out_g = model.forward_features(glob)["x_norm_clstoken"]
        loss = out_g.square().mean()
        if n_local:
            loss = loss + model.forward_features(local)["x_norm_clstoken"].square().mean()
        loss.backward()

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small smoke run for CI")
    parser.add_argument("--reps", type=int, default=32, help="images timed on the single path")
    parser.add_argument("--batch", type=int, default=8, help="batch size (batched path and SSL step)")
    parser.add_argument("--ssl-steps", type=int, default=2)
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "results", "transforms.json")
    )
    args = parser.parse_args()
    args.channels, args.size = 5, 512
    args.global_size, args.local_size, args.local_number, ssl_local = 224, 96, 8, 98
    depth = None
    if args.tiny:
        args.size, args.global_size, args.local_size, ssl_local = 128, 56, 28, 28
        args.reps, args.batch, args.ssl_steps, depth = 4, 2, 1, 2

    x = fields(args.batch, args.channels, args.size)
    mc = multicrop(args)
    coll = MaskCollator(args.global_size, 14, seed=0)
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one DataLoader worker
    single = time_single(mc, x, args.reps)
    batched = time_batched(mc, x, max(1, args.reps // args.batch))
    with_collate = time_collate(mc, coll, x, max(1, args.reps // args.batch))
    torch.set_num_threads(n_threads)
    ssl = time_ssl_step(
        args.batch, args.channels, args.global_size, ssl_local, args.local_number, args.ssl_steps, depth
    )
    rows = [
        {"what": "MultiCrop single path (1 thread)", "images_per_s": single},
        {"what": f"MultiCrop batched path, B={args.batch} (1 thread)", "images_per_s": batched},
        {"what": "MultiCrop single + MaskCollator (1 thread)", "images_per_s": with_collate},
        {"what": f"ViT-S/14 fwd+bwd consumption ({n_threads} threads)", "images_per_s": ssl},
    ]
    for r in rows:
        r["x_consumption"] = r["images_per_s"] / ssl
    result = {
        "tiny": args.tiny,
        "field": [args.channels, args.size, args.size],
        "dtype": "uint16",
        "crops": f"2x{args.global_size} + {args.local_number}x{args.local_size}",
        "ssl_step_crops": f"2x{args.global_size} + {args.local_number}x{ssl_local}",
        "batch": args.batch,
        "cpu_count": os.cpu_count(),
        "torch_threads_ssl": n_threads,
        "machine": platform.machine(),
        "torch": torch.__version__,
        "target": ">= 3x consumption",
        "meets_target": min(single, batched) >= 3 * ssl,
        "rows": rows,
    }
    print(f"{'what':<48} {'images/s':>10} {'x consumption':>14}")
    for r in rows:
        print(f"{r['what']:<48} {r['images_per_s']:>10.2f} {r['x_consumption']:>14.1f}")
    print(f"target >= 3x consumption: {'met' if result['meets_target'] else 'NOT met'}")
    out = args.out if not args.tiny else args.out.replace(".json", "_tiny.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
