"""One SSL training step: cellfm vs a reference step assembled from the official DINOv2 modules.

ViT-S/14 student + EMA teacher, DINO head (65536 prototypes, shared with iBOT), DINO + iBOT + KoLeo
losses, AdamW, batch 16 with 2 x 224 + 8 x 98 crops, drop path 0.3, fp32 on CPU. The reference
forwards each crop group separately (what the official code does without xformers) and uses the
official DINOLoss / iBOTPatchLoss / KoLeoLoss / DINOHead. cellfm rows switch crop packing and the
efficient (subset) stochastic depth on and off, compile the backbones (`train.compile`, inductor;
aot_eager under --tiny) and run under bf16 autocast. Peak memory is measured in a fresh process per
row (the first two rows only under --tiny). MFU: the official step's FLOPs (counted with
torch.utils.flop_counter, forward and backward) per second, against the matmul peak measured in the
same run (fp32, or bf16 for the bf16 row).

    python benchmarks/ssl_step.py              # CPU, ViT-S/14 (about 10 minutes on 2 cores)
    python benchmarks/ssl_step.py --gpu        # GPU variant: ViT-L/14, bf16, batch 32 (< 5 minutes)
    python benchmarks/ssl_step.py --tiny       # CI smoke run
    python benchmarks/ssl_step.py --only compiled  # only the rows whose name contains "compiled"
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import in_fresh_process, machine, matmul_peak_gflops, save, table, warm_peak_rss_mb  # noqa: E402


class Row(NamedTuple):
    name: str
    pack: bool | None  # None: the official step
    subset_sd: bool | None = True
    fused: bool | None = True
    compiled: bool = False  # train.compile: the backbones through torch.compile
    per_block: bool = False  # compile each block on its own (as under FSDP2), not the whole backbone
    precision: str | None = None  # None: the run's precision (fp32 on CPU, bf16 on CUDA)
    attention: str = "per_group"  # packed crops: one SDPA call per crop size, or "jagged" (one call)


ROWS = [
    Row("official reference", None, None, None),
    Row("cellfm packed + subset SD", True),
    Row("cellfm packed + masked SD", True, False),
    Row("cellfm separate + subset SD", False),
    Row("cellfm separate + masked SD", False, False),
    Row("cellfm separate + subset SD, unfused loss", False, True, False),
    Row("cellfm separate + subset SD, compiled", False, compiled=True),
    Row("cellfm packed + subset SD, compiled", True, compiled=True),
    Row("cellfm separate + subset SD, compiled per block", False, compiled=True, per_block=True),
    Row("cellfm packed + subset SD, one jagged attention call", True, attention="jagged"),
    # Mixed precision on one process is autocast (FSDP's per-module policy only changes what is
    # communicated: benchmarks/comm.py); on CPUs with AMX bf16 matmuls run several times faster.
    Row("cellfm separate + subset SD, bf16 autocast", False, precision="bf16"),
]


def settings(args) -> dict:
    if args.tiny:
        return dict(
            size="small",
            depth=2,
            batch=2,
            g=56,
            l=28,
            n_local=2,
            k=1024,
            device="cpu",
            precision="fp32",
            compile_backend="aot_eager",  # inductor's code generation takes minutes on a small CPU
        )
    if args.gpu:
        return dict(
            size="large",
            depth=None,
            batch=32,
            g=224,
            l=98,
            n_local=8,
            k=65536,
            device="cuda",
            precision="bf16",
            compile_backend="inductor",
        )
    return dict(
        size="small",
        depth=None,
        batch=16,
        g=224,
        l=98,
        n_local=8,
        k=65536,
        device="cpu",
        precision="fp32",
        compile_backend="inductor",
    )


def make_batch(s: dict, device: str) -> dict:
    from cellfm.transforms import MaskCollator

    g = torch.Generator().manual_seed(0)
    b = s["batch"]
    samples = [
        {
            "global_crops": [torch.randn(3, s["g"], s["g"], generator=g) for _ in range(2)],
            "local_crops": [torch.randn(3, s["l"], s["l"], generator=g) for _ in range(s["n_local"])],
        }
        for _ in range(b)
    ]
    batch = MaskCollator(global_crops_size=s["g"], patch_size=14, seed=0)(samples)
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


# -- the reference step from the official modules -----------------------------------------------
class OfficialStep:
    def __init__(self, s: dict, device: str):
        from dinov2.layers import DINOHead
        from dinov2.loss import DINOLoss, KoLeoLoss, iBOTPatchLoss
        from dinov2.models import vision_transformer as vits

        kw = dict(patch_size=14, img_size=s["g"], init_values=1e-5, block_chunks=0)
        arch = {"small": vits.vit_small, "large": vits.vit_large}[s["size"]]

        def make(drop_path: float) -> torch.nn.ModuleDict:
            backbone = arch(**kw, drop_path_rate=drop_path, drop_path_uniform=True)
            if s["depth"]:
                backbone.blocks = backbone.blocks[: s["depth"]]
            return torch.nn.ModuleDict(
                {"backbone": backbone, "dino_head": DINOHead(backbone.embed_dim, s["k"])}
            )

        self.student = make(0.3).to(device)
        # The official head uses torch.nn.utils.weight_norm, which cannot be deep-copied.
        self.teacher = make(0.0).to(device).eval()
        self.teacher.load_state_dict(self.student.state_dict())
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.dino, self.ibot, self.koleo = (
            DINOLoss(s["k"]).to(device),
            iBOTPatchLoss(s["k"]).to(device),
            KoLeoLoss(),
        )
        self.opt = torch.optim.AdamW(self.student.parameters(), lr=1e-4)
        self.n_local = s["n_local"]
        self.autocast = s["precision"] == "bf16"

    def __call__(self, batch: dict) -> None:
        glob, local, masks = (
            batch["collated_global_crops"],
            batch["collated_local_crops"],
            batch["collated_masks"],
        )
        idx = batch["mask_indices_list"]
        n_masked = idx.shape[0]
        weight = batch["masks_weight"]
        n_terms = 2 + 2 * self.n_local
        with torch.autocast(glob.device.type, torch.bfloat16, enabled=self.autocast):
            with torch.no_grad():
                t_out = self.teacher["backbone"](glob, is_training=True)
                t_cls = torch.cat(t_out["x_norm_clstoken"].chunk(2)[::-1])
                t_patch = t_out["x_norm_patchtokens"].flatten(0, 1)[idx]
                t_logits = self.teacher["dino_head"](torch.cat([t_cls, t_patch]))
                t_dino = self.dino.softmax_center_teacher(t_logits[: len(t_cls)], teacher_temp=0.07).view(
                    2, -1, t_logits.shape[-1]
                )
                self.dino.update_center(t_logits[: len(t_cls)])
                t_ibot = self.ibot.softmax_center_teacher(
                    t_logits[len(t_cls) :].unsqueeze(0), teacher_temp=0.07
                ).squeeze(0)
                self.ibot.update_center(t_logits[len(t_cls) :].unsqueeze(0))
            s_glob = self.student["backbone"](glob, masks=masks, is_training=True)  # one group at a time
            s_loc = self.student["backbone"](local, is_training=True)
            s_patch = s_glob["x_norm_patchtokens"].flatten(0, 1)[idx]
            logits = self.student["dino_head"](
                torch.cat([s_loc["x_norm_clstoken"], s_glob["x_norm_clstoken"], s_patch])
            )
            nl = s_loc["x_norm_clstoken"].shape[0]
            ng = s_glob["x_norm_clstoken"].shape[0]
            loc_l, glob_l, patch_l = logits[:nl], logits[nl : nl + ng], logits[nl + ng :]
        loss = self.dino(list(loc_l.chunk(self.n_local)), t_dino) / n_terms
        loss = loss + self.dino([glob_l], [t_dino.flatten(0, 1)]) * 2 / n_terms
        loss = loss + 0.1 * sum(self.koleo(c) for c in s_glob["x_norm_clstoken"].chunk(2))
        loss = loss + self.ibot.forward_masked(
            patch_l, t_ibot, student_masks_flat=masks, n_masked_patches=n_masked, masks_weight=weight
        )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        for m in self.student.values():
            torch.nn.utils.clip_grad_norm_(m.parameters(), 3.0)
        self.opt.step()
        with torch.no_grad():
            for t, p in zip(self.teacher.parameters(), self.student.parameters()):
                t.mul_(0.994).add_(p.detach(), alpha=0.006)


# -- the cellfm step -----------------------------------------------------------------------------
class CellfmStep:
    def __init__(self, s: dict, device: str, row: Row):
        from cellfm.models.config import backbone_from_config
        from cellfm.models.layers import Block
        from cellfm.ssl.config import load_ssl_config
        from cellfm.ssl.meta_arch import SSLMetaArch

        overrides = [
            f"model.size={s['size']}",
            "model.patch_size=14",
            f"model.img_size={s['g']}",
            "model.in_chans=3",
            "model.drop_path_rate=0.3",
            f"augment.crops.global_crops_size={s['g']}",
            f"augment.crops.local_crops_size={s['l']}",
            f"dino.head.n_prototypes={s['k']}",
            f"ibot.head.n_prototypes={s['k']}",
            f"train.pack_crops={str(row.pack).lower()}",
            f"train.fused_head_loss={str(row.fused).lower()}",
            f"train.precision={row.precision or s['precision']}",
            f"train.batch_size_per_device={s['batch']}",
        ]
        if s["depth"]:
            overrides.append(f"model.depth={s['depth']}")
        cfg = load_ssl_config("default", overrides)
        self.meta = SSLMetaArch(cfg, backbone_from_config(cfg.model)).to(device)
        for m in self.meta.modules():
            if isinstance(m, Block):
                m.subset_stochastic_depth = row.subset_sd
        if row.attention != "per_group":
            from cellfm.models import set_packed_attention

            set_packed_attention(self.meta, row.attention)
        if row.compiled:
            from cellfm.ssl.compile import compile_backbones

            compile_backbones(self.meta, per_block=row.per_block, backend=s["compile_backend"])
        self.opt = torch.optim.AdamW([p for p in self.meta.student.parameters() if p.requires_grad], lr=1e-4)

    def __call__(self, batch: dict) -> None:
        self.meta.train()
        self.meta.teacher.eval()
        self.opt.zero_grad(set_to_none=True)
        self.meta.forward_backward(batch, 0.07)
        for m in self.meta.student.values():
            torch.nn.utils.clip_grad_norm_(m.parameters(), 3.0)
        self.opt.step()
        self.meta.update_teacher(0.994)


def build(row: Row, s: dict, device: str):
    torch.manual_seed(0)
    return OfficialStep(s, device) if row.pack is None else CellfmStep(s, device, row)


def _cpu_memory(row_index: int, s: dict) -> float:
    """Peak memory of one CPU step of row `row_index` of ROWS (run in a fresh process)."""
    step, batch = build(ROWS[row_index], s, "cpu"), make_batch(s, "cpu")
    return warm_peak_rss_mb(lambda: step(batch))


def count_step_flops(s: dict, device: str) -> float:
    """FLOPs of one official reference step (forward and backward), counted op by op."""
    from torch.utils.flop_counter import FlopCounterMode

    step, batch = build(ROWS[0], s, device), make_batch(s, device)
    with FlopCounterMode(display=False) as counter:
        step(batch)
    return float(counter.get_total_flops())


def matmul_peak(device: str, dtype: torch.dtype, tiny: bool) -> float:
    """Best GFLOP/s of a square matmul on `device` in `dtype`, measured now (the MFU reference)."""
    if device == "cpu":
        return matmul_peak_gflops(1024 if tiny else 4096, reps=5 if tiny else 20, dtype=dtype)
    n = 8192
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(20):
        torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def active_rows(s: dict, only: list[str] | None) -> list[Row]:
    """The rows of this run: all but a precision row equal to the run's own, filtered by `only`."""
    rows = [r for r in ROWS if r.precision is None or r.precision != s["precision"]]
    if s["depth"]:  # the smoke run (--tiny) compiles one row only
        rows = [r for r in rows if not (r.compiled and (r.pack or r.per_block))]

    def wanted(r: Row) -> bool:
        return any(r.name == o[1:] if o.startswith("=") else o in r.name for o in only)

    return [r for r in rows if not only or r is ROWS[0] or wanted(r)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--gpu", action="store_true", help="ViT-L/14, bf16, batch 32 on CUDA")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--only",
        action="append",
        help="run only the rows whose name contains this, or is exactly it with a leading '=' (repeatable; + the reference)",
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the peak-memory runs (fresh processes)"
    )
    args = parser.parse_args()
    s = settings(args)
    if args.gpu and not torch.cuda.is_available():
        sys.exit("--gpu needs a CUDA device")
    rows = active_rows(s, args.only)
    rounds = 1 if args.tiny else args.rounds
    flops = count_step_flops(s, s["device"])
    dtypes = {r.precision or s["precision"] for r in rows}
    peaks = {p: matmul_peak(s["device"], TORCH_DTYPES[p], args.tiny) for p in sorted(dtypes)}
    if s["device"] == "cuda":
        return report(s, args, rows, *cuda_rows(s, rows, rounds), flops, peaks)
    # CPU: the rows take turns within each round, so slow drifts of the machine hit them alike
    batch = make_batch(s, "cpu")
    steps = [build(r, s, "cpu") for r in rows]
    times = [[] for _ in rows]
    for st in steps:  # warm-up (and compilation)
        st(batch)
    for _ in range(rounds):
        for i, st in enumerate(steps):
            t = time.perf_counter()
            st(batch)
            times[i].append(time.perf_counter() - t)
    del steps
    # Each memory row is a fresh process (torch + dinov2 imports, seconds each): the smoke run
    # measures the reference and the first cellfm row only.
    measured = rows[:2] if args.tiny else rows
    memory = [
        in_fresh_process(_cpu_memory, ROWS.index(r), s)
        if r in measured and not args.no_memory
        else float("nan")
        for r in rows
    ]
    return report(s, args, rows, times, memory, flops, peaks)


TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cuda_rows(s: dict, rows: list[Row], rounds: int) -> tuple[list[list[float]], list[float]]:
    """On CUDA, one row at a time in this process: time it, read its peak memory, free it."""
    import gc

    batch = make_batch(s, "cuda")
    times, peaks = [], []
    for row in rows:
        step = build(row, s, "cuda")
        step(batch)
        step(batch)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        row_times = []
        for _ in range(rounds):
            t = time.perf_counter()
            step(batch)
            torch.cuda.synchronize()
            row_times.append(time.perf_counter() - t)
        times.append(row_times)
        peaks.append(torch.cuda.max_memory_allocated() / 2**20)
        del step
        gc.collect()
        torch.cuda.empty_cache()
    return times, peaks


def report(s, args, rows_run, times, peaks, flops: float, matmul: dict[str, float]) -> None:
    rows = []
    for i, row in enumerate(rows_run):
        dt = statistics.median(times[i])
        precision = row.precision or s["precision"]
        rows.append(
            {
                "step": row.name,
                "packing": row.pack,
                "subset_sd": row.subset_sd,
                "fused_head_loss": row.fused,
                "compiled": (s["compile_backend"] + (" per block" if row.per_block else ""))
                if row.compiled
                else None,
                "packed_attention": row.attention if row.pack else None,
                "precision": precision,
                "s_per_step": dt,
                "images_per_s": s["batch"] / dt,
                "mfu": flops / dt / 1e9 / matmul[precision],
                "peak_mem_mb": peaks[i],
            }
        )
    ref = rows[0]
    for r in rows:
        r["speedup"] = ref["s_per_step"] / r["s_per_step"]
        r["memory_ratio"] = r["peak_mem_mb"] / max(ref["peak_mem_mb"], 1e-9)
    print(
        f"SSL step, ViT-{s['size']}/14, batch {s['batch']} (2 x {s['g']} + {s['n_local']} x {s['l']}), "
        f"{s['precision']} on {s['device']}, K={s['k']}; {flops / 1e9:.1f} GFLOP per step (official step, "
        f"counted); matmul peak "
        + ", ".join(f"{p} {v:.0f} GFLOP/s" for p, v in matmul.items())
        + " (measured now; MFU against the row's precision)"
    )
    cols = ["step", "s_per_step", "images_per_s", "mfu", "peak_mem_mb", "speedup", "memory_ratio"]
    print(table(rows, cols))
    name = "ssl_step_gpu" if args.gpu else "ssl_step"
    result = {
        "machine": machine(),
        "settings": s,
        "gflop_per_step": flops / 1e9,
        "matmul_peak_gflops": matmul,
    }
    print(f"saved {save(name, {**result, 'rows': rows}, args.tiny)}")


if __name__ == "__main__":
    main()
