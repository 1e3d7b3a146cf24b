"""Shared helpers for the benchmarks: machine description, tables, JSON results, matmul peak."""

from __future__ import annotations

import gc
import json
import multiprocessing as mp
import os
import platform
import resource
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def matmul_peak_gflops(n: int = 2048, reps: int = 20, dtype: torch.dtype = torch.float32) -> float:
    """Best-of-`reps` GFLOP/s of an n x n matmul on this machine (the MFU reference)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def rss_mb() -> float:
    """High-water resident memory of this process (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every millisecond in a thread."""

    def __enter__(self):
        import threading

        self.base = current_rss_mb()
        self.peak = self.base
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self.peak = max(self.peak, current_rss_mb())
                self._stop.wait(0.001)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_mb())

    @property
    def delta_mb(self) -> float:
        return self.peak - self.base


def warm_peak_rss_mb(call) -> float:
    """Peak resident-memory growth (MB) of `call()`, measured on a second call after a warm-up one
    (allocator caches, lazy initialisation)."""
    call()
    gc.collect()
    with PeakRSS() as mem:
        call()
    return mem.delta_mb


def _put_result(queue, fn, args) -> None:
    try:
        queue.put((True, fn(*args)))
    except BaseException as err:  # else the parent waits for a result forever
        queue.put((False, f"{type(err).__name__}: {err}"))
        raise


def in_fresh_process(fn, *args):
    """`fn(*args)` in a new spawned process (so peak memory is its own); returns its result.
    `fn` must be a module-level function."""
    ctx = mp.get_context("spawn")  # fork after OpenMP use can deadlock
    queue = ctx.Queue()
    proc = ctx.Process(target=_put_result, args=(queue, fn, args))
    proc.start()
    ok, value = queue.get()
    proc.join()
    if not ok:
        raise RuntimeError(f"{fn.__name__}{args} failed in its fresh process: {value}")
    return value


def table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    lines = [" | ".join(c.ljust(widths[c]) for c in columns), "-|-".join("-" * widths[c] for c in columns)]
    lines += [" | ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return "" if v is None else str(v)


def save(name: str, payload: dict, tiny: bool) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}{'_tiny' if tiny else ''}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def vitb14_fsdp_overrides(tiny: bool) -> list[str]:
    """Config overrides of the 2-process FSDP benchmarks (comm, checkpoint): a ViT-B/14 student with
    65536-prototype heads on 56 px crops (tiny: depth 2 and 256 prototypes), sharded with FSDP2."""
    model = ["model.size=tiny", "model.depth=2"] if tiny else ["model.size=base"]
    k = 256 if tiny else 65536
    return model + [
        "model.patch_size=14",
        "model.img_size=56",
        "model.in_chans=3",
        "augment.crops.global_crops_size=56",
        "augment.crops.local_crops_size=28",
        "augment.masking.patch_size=14",
        "data.field_crop_size=56",
        f"dino.head.n_prototypes={k}",
        f"ibot.head.n_prototypes={k}",
        "train.distributed=fsdp",
    ]
