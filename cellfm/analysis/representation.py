"""Pick a representation (X or an obsm key) and the control rows of an AnnData."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def get_rep(adata, rep: str | None = None) -> np.ndarray:
    """`adata.X` (rep None or "X") or `adata.obsm[rep]` as a dense float64 array."""
    if rep in (None, "X"):
        x = adata.X
    else:
        if rep not in adata.obsm:
            raise KeyError(f"no representation {rep!r} in obsm (has {sorted(adata.obsm)})")
        x = adata.obsm[rep]
    x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
    return x.astype(np.float64)


def control_mask(adata, controls: str | Sequence[str] | np.ndarray | None = None) -> np.ndarray:
    """Boolean control rows from a mask, a boolean obs column, or `column=value` terms (ORed).

    None uses a boolean `control` (or `is_control`) column when obs has one.
    """
    if controls is None:
        for col in ("control", "is_control"):
            if col in adata.obs:
                return _bool_column(adata, col)
        raise KeyError(
            f"no controls given and obs has no 'control' column (columns: {list(adata.obs.columns)})"
        )
    if isinstance(controls, np.ndarray):
        if controls.shape != (adata.n_obs,):
            raise ValueError(f"controls mask has shape {controls.shape}, expected ({adata.n_obs},)")
        return controls.astype(bool)
    terms = [controls] if isinstance(controls, str) else list(controls)
    mask = np.zeros(adata.n_obs, dtype=bool)
    for term in terms:
        col, _, value = term.partition("=")
        col = col.strip()
        if col not in adata.obs:
            raise KeyError(
                f"controls {term!r}: obs has no column {col!r} (columns: {list(adata.obs.columns)})"
            )
        if not _:
            mask |= _bool_column(adata, col)
            continue
        hits = adata.obs[col].astype(str).to_numpy() == value.strip()
        if not hits.any():
            values = sorted(map(str, adata.obs[col].unique()))[:10]
            raise ValueError(f"controls {term!r}: no row has {col} == {value.strip()!r} (values: {values})")
        mask |= hits
    return mask


def _bool_column(adata, col: str) -> np.ndarray:
    values = adata.obs[col]
    if values.dtype == bool:
        return values.to_numpy()
    text = values.astype(str).str.strip().str.lower()
    known = text.isin(["true", "false", "1", "0", "yes", "no"])
    if not known.all():
        raise ValueError(f"obs[{col!r}] is not a boolean flag (values like {text[~known].iloc[0]!r})")
    return text.isin(["true", "1", "yes"]).to_numpy()
