"""`curation.parquet`: one row per field / tile with its verdict; reading it back and checking it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

TABLE = "curation.parquet"
ANNDATA = "curation.h5ad"
INDEX = "index.faiss"
REPORT = "report.md"
COLUMNS = ("id", "source", "plate", "well", "field", "tile", "y", "x", "height", "width", "keep", "reason",
           "cluster", "cluster_top", "weight")  # fmt: skip


def table_path(path: str | os.PathLike) -> Path:
    """The curation table of a `cellfm curate` folder (or the table itself)."""
    path = Path(path)
    found = path / TABLE if path.is_dir() else path
    if not found.is_file():
        raise FileNotFoundError(f"{path}: no {TABLE} here (expected the output folder of `cellfm curate`)")
    return found


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_table(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the table as Parquet (pyarrow) to `path` (the caller makes it atomic)."""
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"curation table lacks columns {missing}")
    table.reset_index(drop=True).to_parquet(path, engine="pyarrow", index=False)


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """The curation table of a folder or file; a table without the expected columns is an error."""
    found = table_path(path)
    table = pd.read_parquet(found, engine="pyarrow")
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{found}: not a curation table (missing columns {missing})")
    return table


def check_sources(table: pd.DataFrame, sources: list[str], where: str) -> None:
    """The table must describe exactly the fields `sources` of the stores given; else name the mismatch."""
    listed = set(table["source"].astype(str))
    given = set(sources)
    extra, missing = sorted(listed - given), sorted(given - listed)
    if extra or missing:
        parts = []
        if extra:
            parts.append(f"{len(extra)} curated fields are not in the stores given (e.g. {extra[:3]})")
        if missing:
            parts.append(f"{len(missing)} fields of the stores are not in the curation (e.g. {missing[:3]})")
        raise ValueError(f"{where} does not match the stores: {'; '.join(parts)}; rerun `cellfm curate` "
                         "on these stores or pass the stores it was made from")  # fmt: skip


def summary(table: pd.DataFrame) -> dict[str, int]:
    """Rows per reason (duplicates pooled), kept rows and total."""
    reason = table["reason"].astype(str).where(~table["reason"].astype(str).str.startswith("duplicate_of:"),
                                               "duplicate")  # fmt: skip
    out = {str(k): int(v) for k, v in reason.value_counts().items()}
    out["kept"] = int(np.asarray(table["keep"]).sum())
    out["total"] = len(table)
    return out
