"""Training data path, today's vs the new one: host CPU per image, and the augmentation itself.

python benchmarks/data_path.py                 # 4 fields of 5 x 1080 x 1080 uint16, cellpainting5
python benchmarks/data_path.py --json out.json # also write the headline numbers there
python benchmarks/data_path.py --tiny          # CI smoke: 2 small fields, small crops

Host side (one worker, in-process, CPU seconds per image, stable on a shared machine; old and new
are measured in interleaved rounds and each keeps its best round, likewise the augmentation):
  old = what a worker does today per image: read the region as float32, per-sample MultiCrop,
        collate with iBOT masks;
  new = read the raw region (uint16) + pack + iBOT masks (augmentation moved to the device).
Device side (one thread): today's per-sample MultiCrop + collate vs BatchedMultiCrop on the same
raw regions (the trainer's data.field_crop_size regions); on CUDA also the batched path's
images/s on the GPU, for those regions and for whole fields.
Foreground masks are computed once per field before timing (both paths cache them).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from cellfm.transforms.batched import BatchedMultiCrop, widen

from cellfm.data.writer import create_plate, write_image
from cellfm.ssl.batches import BatchStream
from cellfm.ssl.config import load_ssl_config
from cellfm.ssl.loader import RAW

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, save, table  # noqa: E402

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]


def write_plate(path: str, n_fields: int, size: int) -> str:
    """Fluorescence-like uint16 fields (background + bright cells), chunked 256, with a pyramid."""
    rng = np.random.default_rng(0)
    root = create_plate(path, "bench", {f"A/{i + 1}": ["0"] for i in range(n_fields)}, "0.4")
    yy, xx = np.mgrid[:size, :size]
    for i in range(n_fields):
        base = rng.normal(200, 10, (size, size))
        for cy, cx in rng.integers(0, size, (size // 12, 2)):
            sl = (slice(max(0, cy - 24), cy + 24), slice(max(0, cx - 24), cx + 24))
            base[sl] += 3000 * np.exp(-((yy[sl] - cy) ** 2 + (xx[sl] - cx) ** 2) / 90.0)
        img = np.stack([(base * (1 + 0.2 * c) + rng.normal(0, 5, base.shape)) for c in range(len(CHANNELS))])
        grp = root[f"A/{i + 1}"].require_group("0")
        write_image(grp, img.clip(0, 65535).astype(np.uint16), CHANNELS, "0.4", chunk=256, min_level_size=128)
    return path


def recipe(tiny: bool, batch: int, augment: str):
    over = ["model.pretrained=null", f"train.batch_size_per_device={batch}", "data.num_workers=0",
            f"augment.device={augment}", "data.crops_per_epoch=100000", "data.min_foreground=0.02"]  # fmt: skip
    if tiny:
        over += ["augment.crops.global_crops_size=56", "augment.crops.local_crops_size=28",
                 "data.field_crop_size=96"]  # fmt: skip
    return load_ssl_config("train/cellpainting5", over)


def host_cpu_s_per_image(
    streams: list[BatchStream], n_batches: int, rounds: int
) -> tuple[list[float], list[dict]]:
    """CPU seconds per image to produce host batches, for each stream: rounds of `n_batches`
    interleaved across the streams (so load changes on a shared machine hit all alike), best round
    each, after a warm-up that caches the foreground masks. Also the last stream's first batches."""
    gens = []
    for stream in streams:
        for im in range(len(stream.crops.images)):
            stream.crops._usable(im)  # foreground masks once per field, outside the timing
        gens.append(stream.loader.host_batches(0))
        next(gens[-1])
    best, kept = [float("inf")] * len(streams), []
    for _ in range(rounds):
        for i, (stream, batches) in enumerate(zip(streams, gens)):
            t = time.process_time()
            out = [next(batches) for _ in range(n_batches)]
            best[i] = min(best[i], (time.process_time() - t) / (n_batches * stream.batch_size))
            kept = kept or (out if i == len(streams) - 1 else [])
    return best, kept


def cpu_rates(fns: list, n_images: int, reps: int) -> list[float]:
    """Images per CPU second of each of `fns`: best of `reps` interleaved runs, after a warm-up."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(reps):
        for i, fn in enumerate(fns):
            t = time.process_time()
            fn()
            best[i] = min(best[i], time.process_time() - t)
    return [n_images / b for b in best]


def gpu_rate(fn, n_images: int, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return reps * n_images / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small smoke run for CI")
    parser.add_argument("--json", help="also write the headline numbers to this file")
    parser.add_argument("--batch", type=int, default=8, help="images per batch on the CPU rows")
    parser.add_argument("--gpu-batch", type=int, default=128, help="images per batch on the GPU rows")
    args = parser.parse_args()
    n_fields, size, n_batches, reps = (2, 160, 2, 1) if args.tiny else (4, 1080, 3, 5)
    torch.set_num_threads(1)  # one worker / one core
    rows, res = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        uri = write_plate(str(Path(tmp) / "bench.ome.zarr"), n_fields, size)
        old = BatchStream(recipe(args.tiny, args.batch, "cpu"), [uri])
        new = BatchStream(recipe(args.tiny, args.batch, "device"), [uri])
        (old_s, new_s), raw_batches = host_cpu_s_per_image([old, new], n_batches, reps)
        res["host_cpu_s_per_image_old"], res["host_cpu_s_per_image_new"] = old_s, new_s
        rows += [
            {"what": "host: read float32 + MultiCrop + collate (today)", "cpu_s_per_image": res["host_cpu_s_per_image_old"]},
            {"what": "host: read raw uint16 + pack + masks (new)", "cpu_s_per_image": res["host_cpu_s_per_image_new"]},
        ]  # fmt: skip
        raw = raw_batches[0]
        native = getattr(torch, raw["native_dtype"])
        x = widen(raw[RAW], native)
        regions = x.float()  # what today's workers hand MultiCrop (float32 regions)
        mc, collate = old.multicrop, old.collate.collator
        batched = BatchedMultiCrop(new.multicrop)
        g = torch.Generator().manual_seed(0)
        b = x.shape[0]

        def per_sample():
            collate([mc(regions[i], g) for i in range(b)])

        res["device_images_per_s_cpu_old"], res["device_images_per_s_cpu_new"] = cpu_rates(
            [per_sample, lambda: batched(x, g, native_dtype=native)], b, reps
        )
        rows += [
            {"what": f"augment on CPU: per-sample MultiCrop + collate, B={b}", "images_per_s": res["device_images_per_s_cpu_old"]},
            {"what": f"augment on CPU: BatchedMultiCrop, B={b}", "images_per_s": res["device_images_per_s_cpu_new"]},
        ]  # fmt: skip
        if torch.cuda.is_available():
            dev = torch.device("cuda")
            bf16 = BatchedMultiCrop(new.multicrop, torch.bfloat16)
            gpu_g = torch.Generator(dev).manual_seed(0)
            reg = x.to(dev).repeat(-(-args.gpu_batch // b), 1, 1, 1)[: args.gpu_batch]
            res["device_images_per_s_cuda"] = gpu_rate(
                lambda: bf16(reg, gpu_g, native_dtype=native), len(reg), 5
            )
            whole = widen(torch.from_numpy(new.crops.images[0].read(0, 0, size, size).view(np.int16)), native)
            whole = whole[None].to(dev).repeat(min(args.gpu_batch, 32), 1, 1, 1)
            res["device_images_per_s_cuda_whole_field"] = gpu_rate(lambda: bf16(whole, gpu_g, native_dtype=native), len(whole), 5)  # fmt: skip
            rows += [
                {"what": f"augment on {torch.cuda.get_device_name(0)}: batched, B={len(reg)}, bf16", "images_per_s": res["device_images_per_s_cuda"]},
                {"what": f"  same, crops from whole {size}px fields, B={len(whole)}", "images_per_s": res["device_images_per_s_cuda_whole_field"]},
            ]  # fmt: skip
    res["host_speedup"] = res["host_cpu_s_per_image_old"] / res["host_cpu_s_per_image_new"]
    res["device_cpu_speedup"] = res["device_images_per_s_cpu_new"] / res["device_images_per_s_cpu_old"]
    cfg = new.multicrop
    crops = f"2 x {cfg.global_crops_size} + {cfg.local_crops_number} x {cfg.local_crops_size}"
    print(f"{n_fields} fields of 5 x {size} x {size} uint16, regions {tuple(x.shape[1:])}, crops {crops}")
    print(table(rows, ["what", "cpu_s_per_image", "images_per_s"]))
    print(f"host side: new is {res['host_speedup']:.1f}x today per core (target >= 10x)")
    print(
        f"augmentation on CPU: batched is {res['device_cpu_speedup']:.2f}x per-sample per core (target >= 3x)"
    )
    payload = {"tiny": args.tiny, "machine": machine(), "fields": [n_fields, 5, size, size], "crops": crops,
               "region": list(x.shape[1:]), "batch": b, **res, "rows": rows}  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    print(f"saved {save('data_path', payload, args.tiny)}")


if __name__ == "__main__":
    main()
