"""Cheap multi-scale pixel filters (intensity, Gaussian, gradient magnitude, Laplacian of Gaussian).

They add sharp boundaries to the coarse patch features. Filters run on row strips with a halo wide
enough that a strip equals the same rows of a whole-image pass, so memory stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

TRUNCATE = 4.0


@dataclass(frozen=True)
class FilterBank:
    """Per channel: the intensity, then Gaussian / gradient magnitude / LoG at each sigma."""

    sigmas: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)  # ilastik's default range

    def num_features(self, num_channels: int) -> int:
        return num_channels * (1 + 3 * len(self.sigmas))

    @property
    def halo(self) -> int:
        return int(TRUNCATE * max(self.sigmas, default=0) + 0.5) + 2

    def names(self, num_channels: int) -> list[str]:
        per = ["intensity"] + [f"{k}_s{s:g}" for s in self.sigmas for k in ("gauss", "gradmag", "log")]
        return [f"c{c}_{n}" for c in range(num_channels) for n in per]

    def compute(self, scaled: np.ndarray, rows: tuple[int, int] | None = None) -> np.ndarray:
        """Filters of a (C, H, W) float32 image on `rows` (y0, y1) or all rows -> (F, rows, W)."""
        h = scaled.shape[1]
        y0, y1 = rows if rows is not None else (0, h)
        a, b = max(0, y0 - self.halo), min(h, y1 + self.halo)
        out = []
        for ch in scaled[:, a:b].astype(np.float32, copy=False):
            out.append(ch)
            for s in self.sigmas:
                out.append(ndi.gaussian_filter(ch, s, truncate=TRUNCATE))
                out.append(ndi.gaussian_gradient_magnitude(ch, s, truncate=TRUNCATE))
                out.append(s * s * ndi.gaussian_laplace(ch, s, truncate=TRUNCATE))
        stack = np.stack(out)
        return np.ascontiguousarray(stack[:, y0 - a : y0 - a + (y1 - y0)])
