"""Aggregate rows (cells, tiles, fields) into one profile per well (mean or median)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

SKIP_OBSM = ("spatial", "X_umap", "X_pca")


def aggregate_wells(adata, how: str = "mean", keys: Sequence[str] = ("plate", "well")):
    """AnnData with one row per (plate, well): X and each normalised obsm aggregated.

    obs keeps the columns that are constant within every well (treatment, row, column, ...) and `n_rows`.
    """
    import anndata as ad

    if how not in ("mean", "median"):
        raise ValueError(f"aggregation must be 'mean' or 'median', got {how!r}")
    missing = [k for k in keys if k not in adata.obs]
    if missing:
        raise KeyError(f"obs lacks {missing} to aggregate by (columns: {list(adata.obs.columns)})")
    if adata.n_obs == 0:
        raise ValueError("no rows to aggregate")
    key_frame = adata.obs[list(keys)].astype(str)
    codes, uniques = pd.factorize(pd.MultiIndex.from_frame(key_frame))
    reduce = np.mean if how == "mean" else np.median
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    groups = np.split(order, bounds)

    def agg(x: np.ndarray) -> np.ndarray:
        x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
        return np.stack([reduce(x[g], axis=0) for g in groups]).astype(np.float32)

    first = [g[0] for g in groups]
    constant = [c for c in adata.obs.columns
                if c not in keys and adata.obs[c].groupby(codes, observed=True).nunique(dropna=False).max() <= 1]  # fmt: skip
    obs = adata.obs.iloc[first][list(keys) + constant].copy()
    obs["n_rows"] = [len(g) for g in groups]
    obs.index = ["/".join(map(str, uniques[codes[i]])) for i in first]
    obsm = {k: agg(v) for k, v in adata.obsm.items() if k not in SKIP_OBSM}
    uns = {k: v for k, v in adata.uns.items() if k.startswith("cellfm")}
    uns["cellfm_aggregation"] = {"how": how, "keys": list(keys), "n_input_rows": int(adata.n_obs)}
    return ad.AnnData(X=agg(adata.X), obs=obs, var=adata.var.copy(), obsm=obsm, uns=uns)
