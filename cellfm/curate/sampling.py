"""The crop sampler's view of a curation: kept fields, their weights and (tile level) kept windows."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from cellfm.data.stores import Image

from .table import check_sources, read_table, sha256, table_path


@dataclass
class Curation:
    """Kept `images` (a subset of the stores' fields, in store order), their sampling `weights` (sum 1),
    and for tile-level curations the kept (y, x, h, w) windows of each, in the images' level pixels."""

    path: str
    sha256: str
    images: list[Image]
    weights: np.ndarray
    windows: list[np.ndarray] | None

    @classmethod
    def load(
        cls, path: str | os.PathLike, images: list[Image], expected_sha256: str | None = None
    ) -> Curation:
        """Match a `cellfm curate` output to the fields of the stores; a mismatch is an error naming it."""
        found = table_path(path)
        digest = sha256(found)
        if expected_sha256 and expected_sha256 != digest:
            raise ValueError(f"{found}: sha256 {digest} differs from data.curation_sha256 {expected_sha256} "
                             "(the curation changed since this config was resolved)")  # fmt: skip
        table = read_table(found)
        check_sources(table, [im.source for im in images], str(found))
        kept = table[table["keep"].astype(bool) & (table["weight"] > 0)]
        if kept.empty:
            raise ValueError(f"{found}: no kept rows with a positive weight")
        per_source = kept.groupby("source", sort=False)
        chosen = [im for im in images if im.source in per_source.groups]
        weights = np.array([kept.loc[per_source.groups[im.source], "weight"].sum() for im in chosen], float)
        windows = None
        if (table["tile"] >= 0).any():
            windows = []
            for im in chosen:
                rows = kept.loc[per_source.groups[im.source], ["y", "x", "height", "width"]].to_numpy(float)
                windows.append(np.round(rows / im.scale_to_level0()).astype(np.int64))
        return cls(str(found), digest, chosen, weights / weights.sum(), windows)

    def restrict(
        self, i: int, pos: np.ndarray | None, scale: float, crop: int
    ) -> tuple[np.ndarray | None, float]:
        """Crop positions of image i that lie inside a kept tile: mask positions (`pos` at `scale`) filtered,
        or, when the sampler has no mask (`pos` None), every position on a crop/4 grid at full resolution."""
        if self.windows is None:
            return pos, scale
        wins = self.windows[i]
        if (wins[:, 2] < crop).all() or (wins[:, 3] < crop).all():
            raise ValueError(f"{self.images[i].source}: the {crop}px crop is larger than every kept tile of "
                             f"{self.path} ({wins[:, 2:].max(0).tolist()} px); curate with a larger --tile-size")  # fmt: skip
        if pos is None:
            step = max(1, crop // 4)
            found = [np.stack(np.meshgrid(np.arange(y, y + h - crop + 1, step), np.arange(x, x + w - crop + 1, step),
                                          indexing="ij"), -1).reshape(-1, 2) for y, x, h, w in wins if min(h, w) >= crop]  # fmt: skip
            return np.unique(np.concatenate(found), axis=0), 1.0
        full = pos * scale
        jitter = max(1.0, scale)  # the sampler moves a mask position by up to one mask pixel
        inside = np.zeros(len(pos), bool)
        for y, x, h, w in wins:
            inside |= ((full[:, 0] >= y) & (full[:, 0] + jitter + crop <= y + h)
                       & (full[:, 1] >= x) & (full[:, 1] + jitter + crop <= x + w))  # fmt: skip
        return pos[inside], scale
