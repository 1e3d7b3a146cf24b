"""Turn a finished row store into an AnnData file (.h5ad or .zarr) without holding X in memory.

obs / var / obsm / uns are written by anndata; X is then written into the same file with anndata's
public `anndata.io.write_elem` as a dask array over the row parts, so it is streamed in row blocks. The file is built under a temporary name and renamed, so a
path that exists is always complete.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd

from .rowstore import RowStore

CATEGORICAL = ("plate", "well", "row", "column", "field", "cell_id", "source")
SUFFIXES = (".h5ad", ".zarr")


@dataclass(frozen=True)
class FieldInfo:
    """Where a field comes from (travels into obs)."""

    plate: str
    well: str
    field: str
    source: str


def output_kind(path: str | os.PathLike) -> str:
    """'h5ad' or 'zarr' from the output name; anything else is an error."""
    name = str(path).rstrip("/")
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix[1:]
    raise ValueError(f"{path}: output must end in .h5ad or .zarr")


def split_well(well: str) -> tuple[str, str]:
    """'B12' -> ('B', '12'); names that are not row+column give ('', '')."""
    m = re.fullmatch(r"([A-Za-z]+)(\d+)", well)
    return (m.group(1), m.group(2)) if m else ("", "")


def build_obs(store: RowStore, plan: Sequence[FieldInfo], indices: Sequence[int]) -> pd.DataFrame:
    """obs for the fields `indices` (in that order), from the part files' columns."""
    frames = []
    for i in indices:
        cols = store.columns(i)
        n = len(cols["cell_id"])
        info = plan[i]
        row, col = split_well(info.well)
        frame = {"plate": [info.plate] * n, "well": [info.well] * n, "row": [row] * n, "column": [col] * n,
                 "field": [info.field] * n, "cell_id": cols["cell_id"].astype(str), "source": [info.source] * n,
                 "y": cols["y"].astype(np.float32), "x": cols["x"].astype(np.float32)}  # fmt: skip
        if "area" in cols:
            frame["area"] = cols["area"].astype(np.int64)
        if "tile" in cols:
            frame["tile"] = cols["tile"].astype(np.int64)
        frames.append(pd.DataFrame(frame))
    obs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(CATEGORICAL))
    names = (obs["plate"] + "/" + obs["well"] + "/" + obs["field"]).astype(str)
    if "tile" in obs:
        names = names + "/t" + obs["tile"].astype(str)
    else:
        names = names.where(obs["cell_id"] == "", names + "/c" + obs["cell_id"])
    obs.index = pd.Index(names.astype(str), dtype=object)
    if not obs.index.is_unique:  # same plate name in two stores: prefix the store
        obs.index = pd.Index((obs["source"] + ":" + obs.index).astype(str), dtype=object)
    for col in CATEGORICAL:
        obs[col] = pd.Categorical(obs[col].astype(str))
    return obs


def _part_x(store: RowStore, index: int, width: int) -> np.ndarray:
    x = store.X(index)
    if x.shape[1] != width:
        raise ValueError(f"{store.part(index)}: {x.shape[1]} features, expected {width}")
    return np.asarray(x, dtype=np.float32)


def _n_rows(store: RowStore, index: int) -> int:
    """Rows of a part's X from the .npy header inside the .npz, without reading the array."""
    import zipfile

    with zipfile.ZipFile(store.part(index)) as zf, zf.open("X.npy") as fh:
        version = np.lib.format.read_magic(fh)
        read = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        return int(read(fh)[0][0])


def lazy_x(store: RowStore, indices: Sequence[int], width: int, block_rows: int):
    """X as a dask array in blocks of `block_rows` rows, each part file read when its rows are written."""
    import dask
    import dask.array as da

    parts = [da.from_delayed(dask.delayed(_part_x)(store, i, width), shape=(_n_rows(store, i), width),
                             dtype=np.float32) for i in indices]  # fmt: skip
    x = da.concatenate(parts) if parts else da.zeros((0, width), dtype=np.float32)
    return x.rechunk((max(1, min(x.shape[0], block_rows)), width))


def write_anndata(
    store: RowStore,
    plan: Sequence[FieldInfo],
    var: pd.DataFrame,
    uns: dict[str, Any],
    out: str | os.PathLike,
    metadata: pd.DataFrame | None = None,
    block_rows: int = 4096,
) -> Path:
    """Write the AnnData of all fields of `plan` (all must be done) to `out`; returns its path."""
    import anndata as ad
    from anndata.io import write_elem

    from .metadata import join_metadata

    out = Path(out)
    kind = output_kind(out)
    indices = list(range(len(plan)))
    obs = build_obs(store, plan, indices)
    if metadata is not None:
        obs = join_metadata(obs, metadata)
    n, width = len(obs), len(var)
    spatial = np.stack([obs["x"].to_numpy(np.float64), obs["y"].to_numpy(np.float64)], axis=1)
    adata = ad.AnnData(obs=obs, var=var, uns=uns, obsm={"spatial": spatial})
    tmp = out.parent / f".{out.name}.writing"
    _remove(tmp)
    x = lazy_x(store, indices, width, block_rows)
    if x.shape[0] != n:
        raise RuntimeError(f"row parts hold {x.shape[0]} rows of X, obs has {n}")
    try:
        if kind == "h5ad":
            import h5py

            adata.write_h5ad(tmp)
            with h5py.File(tmp, "r+") as f:
                if "X" in f:
                    del f["X"]
                with dask.config.set(scheduler="synchronous"):  # one h5py handle: write blocks in order
                    write_elem(f, "X", x)
        else:
            import zarr

            with warnings.catch_warnings():  # anndata announces its future zarr v3 default
                warnings.simplefilter("ignore", UserWarning)
                adata.write_zarr(tmp)
            group = zarr.open_group(tmp, mode="r+", use_consolidated=False)  # anndata edits only plain stores
            if "X" in group:
                del group["X"]
            with dask.config.set(scheduler="synchronous"):
                write_elem(group, "X", x)
            zarr.consolidate_metadata(str(tmp))  # anndata reads through the consolidated metadata
        _remove(out)
        os.replace(tmp, out)
    finally:
        _remove(tmp)
    return out


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
