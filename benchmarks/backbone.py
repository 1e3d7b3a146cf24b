"""Backbone speed and memory: cellfm vs the official DINOv2 code, same weights, same process.

Forward (inference) and forward+backward (training) images/s for ViT-S/14 at 224, batch 32, fp32 on
this machine's CPU; peak memory of one training iteration measured in a fresh child process per
implementation; model FLOPs utilisation against the matmul peak measured in the same run.

    python benchmarks/backbone.py            # the full run (a few minutes on 2 CPU cores)
    python benchmarks/backbone.py --tiny     # CI smoke run (seconds)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import in_fresh_process, machine, matmul_peak_gflops, save, table, warm_peak_rss_mb  # noqa: E402


def vit_flops(img: int, patch: int, dim: int, depth: int, in_chans: int = 3) -> float:
    """Forward FLOPs per image (multiply-add = 2) of a DINOv2 ViT with an MLP ratio of 4."""
    n = (img // patch) ** 2 + 1
    per_block = 2 * n * dim * 3 * dim + 2 * 2 * n * n * dim + 2 * n * dim * dim + 2 * 2 * n * dim * 4 * dim
    return depth * per_block + 2 * (n - 1) * dim * in_chans * patch * patch


def build(args):
    from dinov2.models.vision_transformer import vit_small as official_small

    from cellfm.models import vit_small

    torch.manual_seed(0)
    official = official_small(patch_size=14, img_size=224, init_values=1e-5, block_chunks=0)
    ours = vit_small(14, img_size=224, init_values=1e-5)
    ours.load_state_dict(official.state_dict(), strict=True)
    if args.tiny:
        official.blocks, ours.blocks = official.blocks[:2], ours.blocks[:2]
    return {"official": official, "cellfm": ours}


def step(model, x, train: bool) -> None:
    if train:
        out = model.forward_features(x)
        (out["x_norm_clstoken"].square().mean() + out["x_norm_patchtokens"].square().mean()).backward()
        model.zero_grad(set_to_none=True)
    else:
        with torch.inference_mode():
            model.forward_features(x)


def saved_activation_mb(model, x) -> float:
    """Bytes autograd keeps for backward (distinct storages), independent of the allocator."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.forward_features(x)["x_norm_clstoken"].sum()
    return sum(seen.values()) / 2**20


def _memory(name: str, args, train: bool) -> float:
    """Peak memory of one step of model `name` (run in a fresh process)."""
    models = build(args)
    model = models[name].train(train)
    del models
    x = torch.randn(args.batch, 3, args.size, args.size)
    return warm_peak_rss_mb(lambda: step(model, x, train))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CI smoke run: 2 blocks, batch 2, 2 rounds")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.tiny:
        args.batch, args.rounds = 2, 2
    peak = matmul_peak_gflops(1024 if args.tiny else 4096, reps=5 if args.tiny else 20)
    models = build(args)
    x = torch.randn(args.batch, 3, args.size, args.size)
    depth = len(models["cellfm"].blocks)
    flops = vit_flops(args.size, 14, 384, depth)
    rows = []
    for train in (False, True):
        times = {name: [] for name in models}
        for m in models.values():  # warm-up
            m.train(train)
            step(m, x, train)
        for _ in range(args.rounds):  # alternate so both see the same machine state
            for name, m in models.items():
                t = time.perf_counter()
                step(m, x, train)
                times[name].append(time.perf_counter() - t)
        for name in models:
            dt = statistics.median(times[name])
            ips = args.batch / dt
            achieved = ips * flops * (3 if train else 1) / 1e9
            rows.append(
                {
                    "mode": "forward+backward" if train else "forward",
                    "impl": name,
                    "images_per_s": ips,
                    "ms_per_batch": dt * 1e3,
                    "gflops_per_s": achieved,
                    "mfu": achieved / peak,
                    "peak_mem_mb": in_fresh_process(_memory, name, args, train),
                    "activation_mb": saved_activation_mb(models[name], x) if train else None,
                }
            )
    for mode in ("forward", "forward+backward"):
        pair = {r["impl"]: r for r in rows if r["mode"] == mode}
        pair["cellfm"]["speedup_vs_official"] = (
            pair["cellfm"]["images_per_s"] / pair["official"]["images_per_s"]
        )
        pair["cellfm"]["memory_vs_official"] = pair["cellfm"]["peak_mem_mb"] / max(
            pair["official"]["peak_mem_mb"], 1e-9
        )
        if mode == "forward+backward":
            pair["cellfm"]["activations_vs_official"] = (
                pair["cellfm"]["activation_mb"] / pair["official"]["activation_mb"]
            )
    cols = [
        "mode",
        "impl",
        "images_per_s",
        "ms_per_batch",
        "gflops_per_s",
        "mfu",
        "peak_mem_mb",
        "activation_mb",
        "speedup_vs_official",
        "memory_vs_official",
        "activations_vs_official",
    ]
    print(
        f"ViT-S/14, {args.size}px, batch {args.batch}, fp32, {torch.get_num_threads()} threads; "
        f"matmul peak {peak:.0f} GFLOP/s; {flops / 1e9:.2f} GFLOP per image forward"
    )
    print(table(rows, cols))
    path = save(
        "backbone",
        {
            "machine": machine(),
            "matmul_peak_gflops": peak,
            "batch": args.batch,
            "size": args.size,
            "depth": depth,
            "rows": rows,
        },
        args.tiny,
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
