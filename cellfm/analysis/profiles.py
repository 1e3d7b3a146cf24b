"""Profile tables in the cytomining layout (pycytominer, copairs): `Metadata_*` columns, then features.

`Metadata_Plate`, `Metadata_Well` (zero-padded, ``A01``) and, per row, `Metadata_Site` (the field) come
first, then `Metadata_<column>` for every other obs column, then one column per feature, named
`<prefix><var name>`. Written as Parquet (pyarrow) or CSV, atomically.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .aggregate import aggregate_wells
from .representation import get_rep

LEVELS = ("cell", "well")
RENAMED = {"plate": "Metadata_Plate", "well": "Metadata_Well", "field": "Metadata_Site"}


def cytomining_well(well: str) -> str:
    """'A1' -> 'A01', 'P24' -> 'P24'; names that are not row+column are kept."""
    m = re.fullmatch(r"([A-Za-z]+)0*(\d+)", str(well))
    return f"{m.group(1).upper()}{int(m.group(2)):02d}" if m else str(well)


def profile_table(
    adata, level: str = "cell", *, rep: str | None = None, aggregate: str = "mean", feature_prefix: str = ""
) -> pd.DataFrame:
    """A DataFrame of `Metadata_*` columns and features, one row per AnnData row (`cell`) or per well."""
    if level not in LEVELS:
        raise ValueError(f"profile level must be one of {LEVELS}, got {level!r}")
    missing = [c for c in ("plate", "well") if c not in adata.obs]
    if missing:
        raise KeyError(f"obs lacks {missing}, needed for Metadata_Plate / Metadata_Well")
    if level == "well":
        if rep not in (None, "X"):
            adata = adata.copy()
            adata.X = get_rep(adata, rep).astype(np.float32)
        adata, rep = aggregate_wells(adata, aggregate), None
    x = get_rep(adata, rep)
    names = [f"{feature_prefix}{n}" for n in adata.var_names] if x.shape[1] == adata.n_vars else [
        f"{feature_prefix}{rep}_{i}" for i in range(x.shape[1])]  # fmt: skip
    obs = adata.obs
    meta = {}
    for col in ("plate", "well", "field"):
        if col in obs:
            values = obs[col].astype(str)
            meta[RENAMED[col]] = values.map(cytomining_well) if col == "well" else values
    for col in obs.columns:
        if col in RENAMED:
            continue
        name = f"Metadata_{col}"
        if name in meta or name in names:
            raise ValueError(f"two columns would be named {name!r}")
        values = obs[col]
        meta[name] = values.astype(str) if isinstance(values.dtype, pd.CategoricalDtype) else values
    clash = sorted(set(meta) & set(names))
    if clash:
        raise ValueError(f"feature names {clash} collide with metadata columns; set a feature prefix")
    frame = pd.DataFrame(meta).reset_index(drop=True)
    features = pd.DataFrame(x.astype(np.float32), columns=names)
    return pd.concat([frame, features], axis=1)


def write_profiles(table: pd.DataFrame, out: str | os.PathLike) -> Path:
    """Write `table` as Parquet (`.parquet`) or CSV (`.csv`, `.csv.gz`) through a temporary file."""
    from cellfm.atomic import atomic_write

    name = str(out).lower()
    if name.endswith(".parquet"):
        return atomic_write(out, lambda tmp: table.to_parquet(tmp, engine="pyarrow", index=False))
    if name.endswith((".csv", ".csv.gz")):
        compression = "gzip" if name.endswith(".gz") else None
        return atomic_write(out, lambda tmp: table.to_csv(tmp, index=False, compression=compression))
    raise ValueError(f"{out}: profiles are written as .parquet, .csv or .csv.gz")
