"""Crop-loader throughput: CropDataset (0/1/2 workers) vs raw zarr chunk reads vs a naive TIFF-per-crop loader.

python benchmarks/loader.py            # 8 fields of 5 x 1024 x 1024 uint16, 512 crops per row
python benchmarks/loader.py --tiny     # CI smoke: 2 small fields, 32 crops
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np
import tifffile
import torch
import zarr
from torch.utils.data import DataLoader

from cellfm.data import CropDataset, collate_samples, convert_plate, list_fields
from cellfm.data.tiff_ingest import expand_inputs, records_from_pattern

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]
PATTERN = r"(?P<well>[A-H]\d\d)_s(?P<field>\d+)_w(?P<channel>\d)"


def make_tiffs(folder: str, n_fields: int, size: int) -> None:
    """Fluorescence-like fields (noisy background + bright blobs), one TIFF per channel."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for f in range(n_fields):
        base = rng.normal(200, 10, size=(size, size))
        for cy, cx in rng.integers(0, size, size=(size // 16, 2)):
            r = (yy[max(0, cy - 20) : cy + 20, max(0, cx - 20) : cx + 20] - cy) ** 2
            r = r + (xx[max(0, cy - 20) : cy + 20, max(0, cx - 20) : cx + 20] - cx) ** 2
            base[max(0, cy - 20) : cy + 20, max(0, cx - 20) : cx + 20] += 3000 * np.exp(-r / 72.0)
        for c in range(len(CHANNELS)):
            img = (base * (1 + 0.2 * c) + rng.normal(0, 5, size=base.shape)).clip(0, 65535).astype(np.uint16)
            tifffile.imwrite(os.path.join(folder, f"A{1 + f % 2:02d}_s{f // 2}_w{c + 1}.tif"), img)


def bench_raw(uri: str, crop: int, n: int) -> float:
    """Crops/s reading random windows with zarr alone (the limit for any loader on this store)."""
    arrays = [im.array() for im in list_fields(uri)]
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    for i in range(n):
        a = arrays[i % len(arrays)]
        h, w = a.shape[-2:]
        y, x = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
        np.asarray(a[0, :, 0, y : y + crop, x : x + crop], dtype=np.float32)
    return n / (time.perf_counter() - t0)


def bench_naive(folder: str, crop: int, n: int) -> float:
    """Crops/s opening every channel TIFF of a field for each crop."""
    fields = sorted({name.rsplit("_w", 1)[0] for name in os.listdir(folder)})
    rng = np.random.default_rng(2)
    t0 = time.perf_counter()
    for i in range(n):
        stem = os.path.join(folder, fields[i % len(fields)])
        img = np.stack([tifffile.imread(f"{stem}_w{c + 1}.tif") for c in range(len(CHANNELS))])
        y, x = rng.integers(0, img.shape[1] - crop + 1), rng.integers(0, img.shape[2] - crop + 1)
        torch.from_numpy(img[:, y : y + crop, x : x + crop].astype(np.float32))
    return n / (time.perf_counter() - t0)


def bench_loader(uri: str, crop: int, n: int, workers: int, per_field: int, foreground: bool) -> float:
    """Crops/s through CropDataset + DataLoader (batch 32), including worker start-up."""
    ds = CropDataset(
        [uri],
        crop_size=crop,
        crops_per_epoch=n,
        crops_per_field=per_field,
        foreground=foreground,
        min_foreground=0.01,
    )
    loader = DataLoader(ds, batch_size=32, num_workers=workers, collate_fn=collate_samples)
    t0 = time.perf_counter()
    count = sum(len(x) for x, _ in loader)
    return count / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small smoke run for CI")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "loader.json"))
    args = parser.parse_args()
    n_fields, size, n = (2, 320, 32) if args.tiny else (8, 1024, 512)
    crop = 224
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "tiffs")
        os.makedirs(folder)
        make_tiffs(folder, n_fields, size)
        uri = os.path.join(tmp, "plate.ome.zarr")
        records = records_from_pattern(expand_inputs([folder]), PATTERN)
        t0 = time.perf_counter()
        convert_plate(records, uri, channel_names=[f"{i + 1}={n}" for i, n in enumerate(CHANNELS)], chunk=256)
        convert_s = time.perf_counter() - t0
        rows = [("raw zarr chunk reads (limit)", bench_raw(uri, crop, n))]
        rows.append(("naive: open TIFFs per crop", bench_naive(folder, crop, max(8, n // 8))))
        for workers in (0, 1, 2):
            rows.append(
                (
                    f"CropDataset {workers} workers, 1 crop/field",
                    bench_loader(uri, crop, n, workers, 1, False),
                )
            )
        rows.append(("CropDataset 2 workers, 4 crops/field", bench_loader(uri, crop, n, 2, 4, False)))
        rows.append(("CropDataset 2 workers, foreground", bench_loader(uri, crop, n, 2, 1, True)))
    raw = rows[0][1]
    print(
        f"{n} crops of {len(CHANNELS)}x{crop}x{crop} uint16 from {n_fields} fields of {size}x{size}, chunks 256"
    )
    print(f"{'loader':45s} {'crops/s':>9s} {'% raw':>7s}")
    for name, rate in rows:
        print(f"{name:45s} {rate:9.1f} {100 * rate / raw:6.0f}%")
    print(f"convert: {n_fields} fields in {convert_s:.1f} s")
    result = {
        "tiny": args.tiny, "crop": crop, "channels": len(CHANNELS), "n_crops": n, "fields": n_fields, "size": size,
        "cpu_count": os.cpu_count(), "machine": platform.machine(), "torch": torch.__version__, "zarr": zarr.__version__,
        "convert_seconds": convert_s, "rows": [{"loader": k, "crops_per_s": v, "fraction_of_raw": v / raw} for k, v in rows],
    }  # fmt: skip
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    out = args.out if not args.tiny else args.out.replace(".json", "_tiny.json")
    with open(out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
