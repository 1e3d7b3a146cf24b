"""PCA of the backbone's patch grid: a few components so filters and backbone weigh alike in a forest.

A forest draws sqrt(F) candidate features per split; with 192-384 raw backbone dimensions next to a
dozen filters it would almost never look at a filter. Projecting the patch grid on its first
principal components (fitted on the training slices) keeps the groups balanced. The projection is
linear, so projecting the grid and then upsampling equals upsampling and then projecting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_ROWS = 20_000


@dataclass
class PatchProjection:
    mean: np.ndarray  # (D,)
    components: np.ndarray  # (k, D), unit rows, scaled by 1 / singular std so components have unit variance

    @classmethod
    def fit(cls, grids: list[np.ndarray], k: int, seed: int = 0) -> PatchProjection:
        """Principal components of the patch vectors of (D, h, w) grids."""
        rows = np.concatenate([g.reshape(g.shape[0], -1).T for g in grids]).astype(np.float64)
        if len(rows) > MAX_ROWS:
            rows = rows[np.random.default_rng(seed).choice(len(rows), MAX_ROWS, replace=False)]
        mean = rows.mean(0)
        centred = rows - mean
        # eigenvectors of the (D, D) covariance: the SVD's right singular vectors at a fraction of the cost
        evals, evecs = np.linalg.eigh(centred.T @ centred / max(len(rows) - 1, 1))
        order = np.argsort(evals)[::-1][: min(k, len(rows), rows.shape[1])]
        std = np.sqrt(np.maximum(evals[order], 1e-12))
        std = np.maximum(std, 1e-6)
        return cls(mean.astype(np.float32), (evecs[:, order].T / std[:, None]).astype(np.float32))

    def apply(self, grid: np.ndarray) -> np.ndarray:
        """(D, h, w) -> (k, h, w)."""
        d, h, w = grid.shape
        if d != self.components.shape[1]:
            raise ValueError(
                f"patch grid has {d} features, the projection was fitted on {self.components.shape[1]}"
            )
        flat = self.components @ (grid.reshape(d, -1) - self.mean[:, None])
        return flat.reshape(-1, h, w).astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "components": self.components}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> PatchProjection:
        return cls(np.asarray(state["mean"], np.float32), np.asarray(state["components"], np.float32))
