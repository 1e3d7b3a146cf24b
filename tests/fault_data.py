"""Small inputs for the fault-injection tests (tests/test_faults_*.py): TIFF folders, converted plates
with labels, a tiny model, and the paths of chunk files to damage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile

from cellfm.data.writer import with_version, write_image
from tests.test_embed_api import cell_labels, save_tiny

PY = sys.executable
PATTERN = r"(?P<well>[A-H]\d\d)_s(?P<field>\d+)_w(?P<channel>\d)"
CHANNELS = ["DNA", "RNA"]


def tiff_folder(folder: Path, wells=("A01", "A02"), fields=2, size=(64, 64), seed=0, nan_patch=False) -> Path:
    """Two-channel uint16 TIFFs named like `A01_s0_w1.tif`, textured so every field has foreground;
    `nan_patch`: float32 images, the first one with a 12 x 12 NaN patch."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(size)
    for well in wells:
        for f in range(fields):
            for c in range(2):
                blob = 3000 * np.exp(-((yy - size[0] / 2) ** 2 + (xx - size[1] / 2) ** 2) / (size[0] * 4))
                img = (rng.integers(100, 600, size) + blob).astype(np.float32 if nan_patch else np.uint16)
                if nan_patch and (well, f, c) == (wells[0], 0, 0):
                    img[20:32, 20:32] = np.nan
                tifffile.imwrite(folder / f"{well}_s{f}_w{c + 1}.tif", img)
    return folder


def convert(folder: Path, out: Path, chunk: int = 32, **kw) -> str:
    from cellfm.data import convert_plate
    from cellfm.data.tiff_ingest import expand_inputs, records_from_pattern

    records = records_from_pattern(expand_inputs([str(folder)]), PATTERN)
    convert_plate(
        records,
        str(out),
        channel_names=[f"{i + 1}={n}" for i, n in enumerate(CHANNELS)],
        chunk=chunk,
        min_level_size=32,
        **kw,
    )
    return str(out)


def add_labels(store: str, size=(64, 64)) -> None:
    """A `labels/nuclei` image under every field (written by Zarr, so missing chunks are background)."""
    import zarr

    from cellfm.data.plates import list_fields

    root = zarr.open_group(store, mode="r+")
    for im in list_fields(store):
        grp = root[im.path]
        lg = grp.require_group("labels")
        lg.attrs.update(with_version("0.4", {"labels": ["nuclei"]}))
        write_image(
            lg.require_group("nuclei"), cell_labels(size), ["nuclei"], "0.4", chunk=64, min_level_size=512
        )


def converted_plate(tmp: Path, labels: bool = True, **kw) -> str:
    store = convert(tiff_folder(tmp / "tiffs", **kw), tmp / "P.ome.zarr")
    if labels:
        add_labels(store)
    return store


def chunk_file(store: str, field: str = "A/1/0", level: str = "0", key: str = "0/0/0/0/0") -> Path:
    """The file of one chunk (NGFF 0.4 / Zarr v2 with '/' separators)."""
    path = Path(store) / field / level / key
    assert path.is_file(), f"{path} is not a chunk file"
    return path


def tiny_model(tmp: Path) -> str:
    return str(save_tiny(tmp / "tiny.safetensors"))


def run_cli(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([PY, "-m", "cellfm.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, **kw)  # fmt: skip
