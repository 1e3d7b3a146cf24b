"""FSDP2 traffic of one SSL step: bytes all-gathered and reduce-scattered per parameter, counted.

Two CPU processes (gloo) train ViT-B/14 (+ DINO head, 65536 prototypes shared with iBOT) exactly as
`cellfm pretrain` shards it (`cellfm.ssl.parallel.parallelize`). Every `all_gather_single` and
`reduce_scatter_single` FSDP2 issues is counted (all-gather: the gathered output; reduce-scatter: the
unsharded input), split into the student's step and the teacher's forward, and divided by the
student's parameter count. Rows: the old setup (fp32, no policy, student resharded after forward)
and the policy (bf16 gather, bf16 backbone / fp32 head gradient reduction, student kept gathered
from forward to backward, teacher gathered per block in bf16). DINOv2's setup is about 6 bytes.

    python benchmarks/comm.py           # ViT-B/14, 2 processes (about a minute)
    python benchmarks/comm.py --tiny    # CI smoke run (2-block tiny ViT, first two rows)
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, save, table, vitb14_fsdp_overrides  # noqa: E402

WORLD = 2
# (row, train.precision, train.reshard_after_forward)
ROWS = [
    ("before: fp32, no policy, student resharded", "fp32", True),
    ("policy: bf16 gather/reduce, fp32 heads", "bf16", False),
    ("policy + reshard_after_forward", "bf16", True),
]


def overrides(tiny: bool, precision: str, reshard: bool) -> list[str]:
    return vitb14_fsdp_overrides(tiny) + [
        "model.drop_path_rate=0.0",
        "augment.crops.local_crops_number=2",
        "train.batch_size_per_device=2",
        # One forward per block per step, as on CUDA (separate crop groups make FSDP gather every
        # block again in backward for the second group's gradient).
        "train.pack_crops=true",
        f"train.precision={precision}",
        f"train.reshard_after_forward={str(reshard).lower()}",
    ]


class Counting:
    """Counts the bytes of FSDP2's collectives (module attributes of torch.distributed)."""

    def __init__(self):
        self.bytes: Counter = Counter()
        self._orig = {}

    def __enter__(self):
        import torch.distributed as dist

        def wrap(name, key, which):
            import inspect

            fn = getattr(dist, name)
            self._orig[name] = fn
            sig = inspect.signature(fn)

            def counted(*args, **kwargs):
                t = sig.bind(*args, **kwargs).arguments[which]
                self.bytes[(key, str(t.dtype).removeprefix("torch."))] += t.numel() * t.element_size()
                return fn(*args, **kwargs)

            setattr(dist, name, counted)

        wrap("all_gather_single", "all_gather", "output_tensor")  # the gathered tensor
        wrap("reduce_scatter_single", "reduce_scatter", "input")  # the full gradient
        return self

    def __exit__(self, *exc):
        import torch.distributed as dist

        for name, fn in self._orig.items():
            setattr(dist, name, fn)


def _worker(rank: int, port: int, tiny: bool, precision: str, reshard: bool, queue) -> None:
    try:
        _count(rank, port, tiny, precision, reshard, queue)
    except BaseException:
        import traceback

        queue.put({"error": f"rank {rank}: {traceback.format_exc()}"})
        raise


def _count(rank: int, port: int, tiny: bool, precision: str, reshard: bool, queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import warnings

    warnings.filterwarnings("ignore", message="FSDP2-wrapped module")  # dict outputs hold views
    from cellfm.distributed import barrier, init_distributed
    from cellfm.models.config import backbone_from_config
    from cellfm.ssl.config import load_ssl_config
    from cellfm.ssl.meta_arch import SSLMetaArch
    from cellfm.ssl.parallel import parallelize

    info = init_distributed("cpu")
    cfg = load_ssl_config("default", overrides(tiny, precision, reshard))
    torch.manual_seed(0)
    meta = SSLMetaArch(cfg, backbone_from_config(cfg.model))
    n_student = sum(p.numel() for p in meta.student.parameters())
    n_head = n_student - sum(p.numel() for p in meta.student["backbone"].parameters())
    meta.runners = parallelize(meta, cfg, info)
    batch = _batch(cfg)
    glob, masks = batch["collated_global_crops"], batch["collated_masks"]
    idx = masks.flatten().nonzero().flatten()

    def step():
        meta.forward_backward(batch, 0.04)
        meta.update_teacher(0.99)

    step()  # warm-up (lazy initialisation)
    with Counting() as total:
        step()
    with Counting() as teacher, torch.no_grad(), meta._autocast(glob.device):
        meta._teacher_targets(glob, masks, idx, 0.04)
    barrier()
    if rank == 0:
        student = total.bytes - teacher.bytes
        queue.put(
            {
                "n_student": n_student,
                "n_head": n_head,
                "student": dict(student),
                "teacher": dict(teacher.bytes),
            }
        )
    barrier()


def _batch(cfg) -> dict:
    from cellfm.transforms import MaskCollator

    g = torch.Generator().manual_seed(0)
    c = cfg.augment.crops
    samples = [
        {
            "global_crops": [
                torch.randn(3, c.global_crops_size, c.global_crops_size, generator=g) for _ in range(2)
            ],
            "local_crops": [
                torch.randn(3, c.local_crops_size, c.local_crops_size, generator=g)
                for _ in range(c.local_crops_number)
            ],
        }
        for _ in range(cfg.train.batch_size_per_device)
    ]
    return MaskCollator(global_crops_size=c.global_crops_size, patch_size=cfg.model.patch_size, seed=0)(
        samples
    )


def measure(tiny: bool, precision: str, reshard: bool) -> dict:
    import multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(r, port, tiny, precision, reshard, queue)) for r in range(WORLD)
    ]
    for p in procs:
        p.start()
    result = queue.get(timeout=900)
    for p in procs:
        p.join(timeout=60)
        if p.is_alive():
            p.kill()
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def per_param(counts: dict, n: int, kind: str | None = None) -> float:
    return sum(v for (k, _), v in counts.items() if kind in (None, k)) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    rows = []
    # Each row is a pair of fresh processes; the smoke run (--tiny) counts before and after the policy
    # (tests/test_ssl_distributed.py checks the policy row's bytes exactly).
    for name, precision, reshard in ROWS[:2] if args.tiny else ROWS:
        r = measure(args.tiny, precision, reshard)
        n = r["n_student"]
        s, t = r["student"], r["teacher"]
        rows.append(
            {
                "setup": name,
                "params": n,
                "head_fraction": r["n_head"] / n,
                "student_gather_B": per_param(s, n, "all_gather"),
                "student_reduce_B": per_param(s, n, "reduce_scatter"),
                "teacher_gather_B": per_param(t, n, "all_gather"),
                "total_B_per_param": per_param(s, n) + per_param(t, n),
                "by_dtype": {
                    f"{who}.{k}.{d}": v / n
                    for who, c in (("student", s), ("teacher", t))
                    for (k, d), v in c.items()
                },
            }
        )
    cols = ["setup", "params", "head_fraction", "student_gather_B", "student_reduce_B", "teacher_gather_B"]
    print(table(rows, cols + ["total_B_per_param"]))
    payload = {"machine": machine(), "world_size": WORLD, "target_B_per_param": 7.0, "rows": rows}
    print(f"saved {save('comm', payload, args.tiny)}")


if __name__ == "__main__":
    main()
