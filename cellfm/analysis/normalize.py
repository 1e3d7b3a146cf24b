"""Per-plate normalisation of embeddings to control rows; each result goes to `obsm["X_<method>"]`.

- standardize: (x - mean) / std of the plate's controls;
- mad: (x - median) / (1.4826 * MAD) of the plate's controls (robust z-score);
- sphering: ZCA whitening fitted on the plate's controls (their covariance becomes the identity);
- tvn: typical variation normalisation (Ando et al. 2017): PCA whitening fitted on all controls,
  then per-plate CORAL alignment (each plate's controls whitened again in that space).

With fewer control rows than features, the control covariance has rank r < d and whitening would
scale its d - r null directions by 1/sqrt(eps) (values ~1e3). Sphering and TVN then set those null
eigenvalues to the smallest non-null one, as pycytominer's `Spherize` does, and warn with the counts.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from .representation import control_mask, get_rep

METHODS = ("standardize", "mad", "sphering", "tvn")


def _inv_sqrt(
    cov: np.ndarray, eps: float, rank: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvectors, eigenvalues and 1/sqrt(eigenvalue + eps); with `rank` < d, the d - rank smallest
    (null) eigenvalues are raised to the smallest of the top `rank` ones."""
    vals, vecs = np.linalg.eigh(cov)  # ascending
    vals = np.clip(vals, 0, None)
    if rank is not None and 0 < rank < len(vals):
        vals[: len(vals) - rank] = vals[len(vals) - rank]
    return vecs, vals, 1.0 / np.sqrt(vals + eps)


def _rank(ref: np.ndarray, mu: np.ndarray, where: str) -> int | None:
    """The rank of the centred controls when they are too few to span the features, else None."""
    n, d = ref.shape
    if n > d:
        return None
    rank = int(np.linalg.matrix_rank(ref - mu))
    warnings.warn(
        f"{where}: {n} control rows for {d} features, so the control covariance has rank {rank}; its "
        f"{d - rank} null eigenvalues are set to the smallest non-null one (add controls for a full-rank fit)",
        UserWarning,
        stacklevel=3,
    )
    return max(rank, 1)


def _cov(ref: np.ndarray, mu: np.ndarray) -> np.ndarray:
    d = ref.shape[1]
    return np.cov(ref - mu, rowvar=False).reshape(d, d)


def zca(x: np.ndarray, ref: np.ndarray, eps: float, where: str = "sphering") -> np.ndarray:
    """ZCA-whiten `x` with the mean and covariance of `ref` (rank-regularised when `ref` is short)."""
    mu = ref.mean(0)
    vecs, _, inv = _inv_sqrt(_cov(ref, mu), eps, _rank(ref, mu, where))
    return (x - mu) @ (vecs * inv) @ vecs.T


def pca_whiten(x: np.ndarray, ref: np.ndarray, eps: float, where: str = "tvn") -> np.ndarray:
    """PCA-whiten `x` (components by decreasing variance) with the mean and covariance of `ref`."""
    mu = ref.mean(0)
    vecs, _, inv = _inv_sqrt(_cov(ref, mu), eps, _rank(ref, mu, where))
    return ((x - mu) @ (vecs * inv))[:, ::-1]


def normalize_to_controls(
    adata,
    method: str = "standardize",
    controls: str | Sequence[str] | np.ndarray | None = None,
    *,
    by: str | None = "plate",
    rep: str | None = None,
    eps: float = 1e-6,
    key_added: str | None = None,
) -> np.ndarray:
    """Normalise `rep` per `by` group (plate) to its control rows; stored in obsm and returned."""
    if method not in METHODS:
        raise ValueError(f"normalisation method must be one of {METHODS}, got {method!r}")
    x = get_rep(adata, rep)
    ctrl = control_mask(adata, controls)
    if by and by not in adata.obs:
        raise KeyError(f"obs has no column {by!r} to normalise by")
    groups = adata.obs[by].astype(str).to_numpy() if by else np.zeros(adata.n_obs, dtype=object)
    out = np.empty_like(x)
    if method == "tvn":
        if ctrl.sum() < 2:
            raise ValueError(f"tvn needs at least 2 control rows, found {int(ctrl.sum())}")
        x = pca_whiten(x, x[ctrl], eps, "tvn (all controls)")
    for group in np.unique(groups):
        rows = groups == group
        ref = x[rows & ctrl]
        if len(ref) < 2:
            raise ValueError(
                f"{by or 'data'} {group!r}: {len(ref)} control rows; {method} needs at least 2 per {by or 'set'}"
            )
        if method == "standardize":
            out[rows] = (x[rows] - ref.mean(0)) / np.maximum(ref.std(0), eps)
        elif method == "mad":
            med = np.median(ref, axis=0)
            mad = 1.4826 * np.median(np.abs(ref - med), axis=0)
            out[rows] = (x[rows] - med) / np.maximum(mad, eps)
        else:  # sphering, and the per-plate CORAL step of tvn
            out[rows] = zca(x[rows], ref, eps, f"{method} {by or 'data'} {group!r}")
    result = out.astype(np.float32)
    adata.obsm[key_added or f"X_{method}"] = result
    adata.uns.setdefault("cellfm_analysis", {}).setdefault("normalization", {})[key_added or f"X_{method}"] = {
        "method": method, "by": by or "none", "rep": rep or "X", "n_controls": int(ctrl.sum())}  # fmt: skip
    return result
