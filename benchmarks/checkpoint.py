"""Checkpoint cost per process: peak host memory and seconds to save and to resume, full vs sharded.

Two CPU processes (gloo) hold a ViT-B/14 SSL run sharded with FSDP2 exactly as `cellfm pretrain`
does (`cellfm.ssl.parallel.parallelize`: student, EMA teacher, DINO/iBOT head with 65536 prototypes,
AdamW moments after one step), then save and resume it through the trainer's own functions
(`cellfm.ssl.training_state`): the full-state `checkpoint.pt` (gathered onto the main process) and
the sharded `checkpoints/step_N/` (torch.distributed.checkpoint, each process its shards). Memory is
each process's resident high-water mark (VmHWM, reset through /proc/self/clear_refs before each
operation) above its resident size before it: what the checkpoint costs on top of training.
Target: at most 1/world_size of the state plus one block (the largest tensor) per process.

    python benchmarks/checkpoint.py           # ViT-B/14, 2 processes (about a minute)
    python benchmarks/checkpoint.py --tiny    # CI smoke run (2-block tiny ViT; full and sharded only)
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, save, table, vitb14_fsdp_overrides  # noqa: E402

WORLD = 2
MB = 2**20
# The trainer's two formats, and the full-state resume as it was before (each process read the file).
FORMATS = ("full, every process reads", "full", "sharded", "sharded, async")


def overrides(tiny: bool) -> list[str]:
    return vitb14_fsdp_overrides(tiny)


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class HighWater:
    """Peak resident memory (MB) of this process above its level at entry (VmHWM, reset at entry)."""

    def __enter__(self):
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the system: a clean baseline
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
        self.base = _status_kb("VmRSS")
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self.peak_mb = (_status_kb("VmHWM") - self.base) / 1024


def _local_bytes(obj) -> int:
    """Bytes of this process's own tensors (local shards of DTensors) in a nested state."""
    if hasattr(obj, "to_local"):
        obj = obj.to_local()
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_local_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_local_bytes(v) for v in obj)
    return 0


def _worker(rank: int, port: int, tiny: bool, fmt: str, folder: str, queue) -> None:
    try:
        queue.put(_measure(rank, port, tiny, fmt, Path(folder)))
    except BaseException:
        import traceback

        queue.put({"error": f"rank {rank}: {traceback.format_exc()}"})
        raise
    finally:
        queue.close()
        queue.join_thread()  # the result is through the pipe before the process ends
        os._exit(0)  # after the final barrier: gloo teardown at exit aborts now and then


def _build(tiny: bool, info):
    from cellfm.models.config import backbone_from_config
    from cellfm.ssl.config import load_ssl_config
    from cellfm.ssl.meta_arch import SSLMetaArch
    from cellfm.ssl.parallel import parallelize
    from cellfm.ssl.param_groups import param_groups

    cfg = load_ssl_config("default", overrides(tiny))
    torch.manual_seed(0)
    meta = SSLMetaArch(cfg, backbone_from_config(cfg.model))
    meta.runners = parallelize(meta, cfg, info)
    groups = param_groups(meta.student, meta.student["backbone"].n_blocks, 0.9, 0.2)
    optimizer = torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups])
    for p in meta.student.parameters():  # AdamW moments exist after a first step
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return cfg, meta, optimizer


def _measure(rank: int, port: int, tiny: bool, fmt: str, folder: Path) -> dict:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import warnings

    warnings.filterwarnings("ignore", message=".*FSDP.*")
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    from cellfm.distributed import barrier, init_distributed
    from cellfm.ssl import training_state as ts
    from cellfm.ssl.checkpointing import load_training_state, save_training_state
    from cellfm.ssl.sharded_checkpoint import AsyncSaver, latest_sharded, save_sharded

    info = init_distributed("cpu")
    cfg, meta, optimizer = _build(tiny, info)
    live = ts.sharded_state(meta, optimizer)
    local = _local_bytes(live)
    full_sd = {k: v for k, v in meta.state_dict().items()}
    largest = max(v.numel() * v.element_size() for v in full_sd.values() if hasattr(v, "numel"))
    shape = {k: tuple(v.shape) for k, v in full_sd.items() if k == "student.dino_head.last_layer.weight"}
    del live, full_sd
    barrier()
    blocking = None
    saver = AsyncSaver(folder, info.is_main) if fmt == "sharded, async" else None  # its gloo group
    with HighWater() as saving:
        if fmt.startswith("full"):
            state = {"step": 1, **ts.full_state(meta, optimizer), "rng": torch.get_rng_state(), "config": {}}
            if info.is_main:
                save_training_state(folder, state)
            del state
        elif fmt == "sharded, async":  # training could go on once save() returns
            ts.fold_center_updates(meta)
            saver.save(ts.sharded_state(meta, optimizer), 1, {"config": {}})
            blocking = time.perf_counter() - saving.t0
            saver.wait()
        else:
            ts.fold_center_updates(meta)
            save_sharded(folder, ts.sharded_state(meta, optimizer), 1, {"config": {}}, info.is_main)
        barrier()
    before = [p.detach().to_local().clone() for p in meta.student.parameters()]
    with torch.no_grad():  # resume must bring these back
        for p in meta.student.parameters():
            p.zero_()
    barrier()
    with HighWater() as resuming:
        if fmt == "full":
            ts.load_full_state(meta, optimizer, ts.read_full_state(folder))
        elif fmt == "full, every process reads":  # before: each process loaded the whole file
            state = load_training_state(folder)
            options = StateDictOptions(full_state_dict=True)
            set_model_state_dict(meta, state["meta"], options=options)
            set_optimizer_state_dict(meta.student, optimizer, state["optimizer"], options=options)
            del state
        else:
            ts.load_sharded_state(meta, optimizer, latest_sharded(folder))
        barrier()
    restored = all(torch.equal(p.detach().to_local(), b) for p, b in zip(meta.student.parameters(), before))
    del before
    barrier()
    return {
        "rank": rank,
        "local_state_MB": local / MB,
        "largest_tensor_MB": largest / MB,
        "prototype_shape": shape,
        "save_s": saving.seconds,
        "save_blocking_s": saving.seconds if blocking is None else blocking,
        "save_peak_MB": saving.peak_mb,
        "resume_s": resuming.seconds,
        "resume_peak_MB": resuming.peak_mb,
        "restored": restored,
    }


def measure(tiny: bool, fmt: str) -> list[dict]:
    import multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="cellfm_ckpt_bench_") as folder:
        procs = [ctx.Process(target=_worker, args=(r, port, tiny, fmt, folder, queue)) for r in range(WORLD)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=600 if tiny else 1800) for _ in procs]
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    for r in results:
        if "error" in r:
            raise RuntimeError(r["error"])
    return sorted(results, key=lambda r: r["rank"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    rows = []
    # Each format is two fresh processes; the smoke run (--tiny) measures the trainer's two defaults.
    for fmt in ("full", "sharded") if args.tiny else FORMATS:
        results = measure(args.tiny, fmt)
        state_mb = sum(r["local_state_MB"] for r in results)  # FSDP: each process holds its shards
        for r in results:
            target = state_mb / WORLD + r["largest_tensor_MB"]
            peak = max(r["save_peak_MB"], r["resume_peak_MB"])
            if not r["restored"]:
                raise RuntimeError(f"{fmt}: rank {r['rank']} did not get its weights back on resume")
            rows.append(
                {
                    "format": fmt,
                    "rank": r["rank"],
                    "state_MB": state_mb,
                    "save_s": r["save_s"],
                    "save_blocking_s": r["save_blocking_s"],
                    "save_peak_MB": r["save_peak_MB"],
                    "resume_s": r["resume_s"],
                    "resume_peak_MB": r["resume_peak_MB"],
                    "target_MB": target,
                    "peak_over_state": peak / state_mb,
                    "meets_target": peak <= target,
                    "largest_tensor_MB": r["largest_tensor_MB"],
                }
            )
    cols = ["format", "rank", "state_MB", "save_s", "save_blocking_s", "save_peak_MB", "resume_s"]
    cols += ["resume_peak_MB"]
    print(table(rows, cols + ["target_MB", "peak_over_state", "meets_target"]))
    payload = {
        "machine": machine(),
        "world_size": WORLD,
        "model": "tiny (depth 2)" if args.tiny else "ViT-B/14 + 65536-prototype head",
        "target": "per-process peak <= state / world_size + largest tensor",
        "rows": rows,
    }
    print(f"saved {save('checkpoint', payload, args.tiny)}")


if __name__ == "__main__":
    main()
