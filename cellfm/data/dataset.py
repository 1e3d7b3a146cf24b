"""Training crops streamed from OME-Zarr / Zarr / TIFF stores: weighted, foreground-aware, sharded."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from cellfm.data import sampler
from cellfm.data.channels import match_channels
from cellfm.data.checked_read import BadData, append_record, check_finite, check_policy, decide
from cellfm.data.plates import list_fields
from cellfm.data.sharding import current_shard
from cellfm.data.stats import ChannelStats
from cellfm.data.stores import Image
from cellfm.data.window_reads import read_windows

log = logging.getLogger(__name__)
WEIGHTINGS = ("field", "well", "plate")
Sample = tuple[torch.Tensor, dict[str, Any]]


def field_weights(
    images: list[Image], weighting: str, plate_weights: dict[str, float] | None = None
) -> np.ndarray:
    """Sampling probability per field: equal per field, per well, or per plate (then per well)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting {weighting!r} unknown (expected one of {WEIGHTINGS})")
    per_well = Counter((im.plate, im.well) for im in images)
    wells_per_plate = Counter(p for p, _ in per_well)
    w = np.ones(len(images))
    for i, im in enumerate(images):
        if weighting in ("well", "plate"):
            w[i] /= per_well[(im.plate, im.well)]
        if weighting == "plate":
            w[i] /= wells_per_plate[im.plate]
        w[i] *= (plate_weights or {}).get(im.plate, 1.0)
    if w.sum() <= 0:
        raise ValueError("all field weights are zero (check plate_weights)")
    return w / w.sum()


def collate_samples(batch: list[Sample]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Stack crops into (B, C, H, W) and keep the metadata as a list of dicts."""
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


class CropDataset(IterableDataset):
    """Random crops (or crops centred on cells) from the fields of one or more stores.

    Each epoch is a fixed list of items drawn from (seed, epoch), split across ranks x workers so
    that every item is produced exactly once. Zarr handles are opened lazily in each worker.
    With ``native = True`` crops keep the stored dtype (uint16 stays uint16) and `stats` is not
    applied: the device-side augmentation normalises them.
    """

    native: bool = False

    def __init__(
        self,
        sources: list[str] | list[Image],
        *,
        crop_size: int = 224,
        crops_per_epoch: int = 1024,
        crops_per_field: int = 4,
        level: int | str = 0,
        weighting: str = "field",
        plate_weights: dict[str, float] | None = None,
        foreground: bool = True,
        threshold: str | float = "otsu",
        min_foreground: float = 0.1,
        mask_max_size: int = 512,
        channels: list[str] | None = None,
        cells: str | None = None,
        labels_name: str | None = None,
        stats: ChannelStats | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        storage_options: dict | None = None,
        on_bad_data: str = "skip",
        nan_policy: str = "error",
        curation: str | None = None,
        curation_sha256: str | None = None,
    ) -> None:
        super().__init__()
        check_policy(on_bad_data, nan_policy)
        self.on_bad_data, self.nan_policy = on_bad_data, nan_policy
        self.bad_data_log: str | None = None  # JSON-lines file the skipped items are recorded in
        images: list[Image] = []
        for src in sources:
            images += [src] if isinstance(src, Image) else list_fields(src, level, strict=False,
                                                                     storage_options=storage_options)  # fmt: skip
        if not images:
            raise ValueError(f"no fields found in {sources}")
        self.curation = None
        if curation is not None:  # `cellfm curate` output: only kept fields / tiles, with its weights
            from cellfm.curate.sampling import Curation

            self.curation = Curation.load(curation, images, curation_sha256)
            images = self.curation.images
        self.images = images
        self.channels = match_channels(images, channels)
        self.crop, self.crops_per_epoch, self.crops_per_field = (
            crop_size,
            crops_per_epoch,
            max(1, crops_per_field),
        )
        self.weights = field_weights(images, weighting, plate_weights)
        if self.curation is not None:
            self.weights = self.curation.weights
        self.foreground, self.threshold, self.min_foreground = foreground, threshold, min_foreground
        self.mask_max_size = mask_max_size
        self.stats = stats.select(self.channels) if stats is not None else None
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        self.cells = self._collect_cells(cells, labels_name) if cells else None
        self.counters: Counter[str] = Counter()
        self._positions: dict[int, np.ndarray | None] = {}
        self._scale: dict[int, float] = {}

    # -- epoch plan ----------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose item list the next iteration produces."""
        self.epoch = int(epoch)

    @property
    def epoch_size(self) -> int:
        """Items per epoch over all ranks and workers."""
        return len(self.cells) if self.cells is not None else self.crops_per_epoch

    def _collect_cells(self, cells: str, labels_name: str | None) -> list[tuple[int, int, float, float]]:
        """(image index, cell id, y, x) for every object, in each image's chosen-level pixels."""
        out: list[tuple[int, int, float, float]] = []
        table = sampler.csv_centroids(cells) if cells != "labels" else None
        for i, im in enumerate(self.images):
            if table is None:
                lab = im.labels_image(labels_name)
                try:
                    found = sampler.label_centroids(lab)
                except BadData as err:
                    if not decide(err, self.on_bad_data, self.nan_policy):
                        raise
                    log.warning("single-cell mode: skipping the cells of %s: %s", im.source, err)
                    self._bad(err, "labels")
                    continue
                scale = im.level_shape()[1] / lab.level_shape(0)[1]
            else:
                found = table.get((im.plate, im.well, im.field), []) + table.get(("", im.well, im.field), [])
                found += table.get(("", "", ""), []) if len(self.images) == 1 else []
                scale = 1.0 / im.scale_to_level0()
            out += [(i, cid, cy * scale, cx * scale) for cid, cy, cx in found]
        if not out:
            raise ValueError(f"single-cell mode: no objects found ({cells})")
        return out

    # -- iteration ------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Sample]:
        shard = current_shard(self.rank, self.world_size)
        try:
            if self.cells is not None:
                order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.cells))
                for j in shard.take(len(order)):
                    yield from self._cell_crop(int(order[j]), j)
            else:
                k = self.crops_per_field
                n_groups = math.ceil(self.crops_per_epoch / k)
                picks = np.random.default_rng([self.seed, self.epoch]).choice(
                    len(self.images), n_groups, p=self.weights
                )
                for g in shard.take(n_groups):
                    n = min(k, self.crops_per_epoch - g * k)
                    yield from self._group(int(picks[g]), n, g)
        finally:
            bad = {k: v for k, v in self.counters.items() if v}
            if bad:
                log.warning(
                    "rank %d worker %d epoch %d: skipped %s", shard.rank, shard.worker, self.epoch, dict(bad)
                )

    def _meta(self, im: Image, y: int, x: int, item: str, cell_id: int = -1) -> dict[str, Any]:
        return {"source": im.source, "plate": im.plate, "well": im.well, "field": im.field, "y": y, "x": x,
                "level": im.level, "channels": list(self.channels), "item": item, "cell_id": cell_id}  # fmt: skip

    def _to_tensor(self, data: np.ndarray) -> torch.Tensor:
        if self.native:
            return torch.from_numpy(np.ascontiguousarray(data))
        x = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
        if self.stats is not None:
            lo = torch.tensor(self.stats.p_low).view(-1, 1, 1)
            hi = torch.tensor(self.stats.p_high).view(-1, 1, 1)
            x = (x - lo) / (hi - lo).clamp_min(1e-6)
        return x

    def _usable(self, i: int) -> np.ndarray | None:
        """Foreground crop positions of field i (cached); None = anywhere; raises if the field is broken."""
        if i not in self._positions:
            im = self.images[i]
            _, h, w = im.shape
            if h < self.crop or w < self.crop:
                raise ValueError(f"{im.source}: {h}x{w} is smaller than the {self.crop}px crop")
            if not self.foreground:
                self._positions[i] = None
            else:
                mask, scale = sampler.foreground_mask(im, self.threshold, self.mask_max_size, self.nan_policy)
                self._positions[i] = sampler.crop_positions(
                    mask, scale, self.crop, (h, w), self.min_foreground
                )
                self._scale[i] = scale
            if self.curation is not None:
                self._positions[i], self._scale[i] = self.curation.restrict(
                    i, self._positions[i], self._scale.get(i, 1.0), self.crop
                )
        return self._positions[i]

    def _pick_field(self, i: int, rng: np.random.Generator) -> int | None:
        """Field i, or a replacement drawn by weight when i is missing, broken or all background."""
        for _ in range(16):
            try:
                pos = self._usable(i)
            except (FileNotFoundError, KeyError, ValueError, IndexError) as err:
                if isinstance(err, BadData) and not decide(err, self.on_bad_data, self.nan_policy):
                    raise
                self.counters["missing_or_bad_fields"] += 1
                log.warning("skipping field %s: %s", self.images[i].source, err)
                if isinstance(err, BadData):
                    self._bad(err, "foreground mask")
                self._positions[i] = np.zeros((0, 2), dtype=np.int64)
                pos = self._positions[i]
            if pos is None or len(pos):
                return i
            self.counters["background_fields"] += 1
            i = int(rng.choice(len(self.images), p=self.weights))
        return None

    def _group(self, i: int, n: int, g: int) -> Iterator[Sample]:
        rng = np.random.default_rng([self.seed, self.epoch, g])
        picked = self._pick_field(i, rng)
        if picked is None:
            self.counters["groups_without_foreground"] += 1
            return
        im = self.images[picked]
        _, h, w = im.shape
        pos = self._positions[picked]
        if pos is None:
            windows = [(int(rng.integers(0, h - self.crop + 1)), int(rng.integers(0, w - self.crop + 1)))
                       for _ in range(n)]  # fmt: skip
        else:
            rows = pos[rng.integers(0, len(pos), size=n)]
            windows = [sampler.to_full_res(p, self._scale[picked], self.crop, (h, w), rng) for p in rows]
        yield from self._read_windows(im, windows, [f"{self.epoch}:{g}:{j}" for j in range(n)])

    def _read_windows(self, im: Image, windows: list[tuple[int, int]], items: list[str]) -> Iterator[Sample]:
        """Read crops; windows that share chunks are cut from one read of their chunks' union."""
        c = self.crop
        ok = []
        for (y, x), item in zip(windows, items):
            missing = self._safe(im, lambda y=y, x=x: im.missing_chunks(y, x, c, c))
            if missing and self.on_bad_data == "fail":
                raise BadData("absent_chunks", im.source, str(im.array().path), missing, "missing chunks in a crop "
                              f"y={y} x={x} (--on-bad-data fail)")  # fmt: skip
            if missing is None or missing:
                self.counters["missing_chunks"] += 1
                if missing:
                    self._bad(BadData("absent_chunks", im.source, str(im.array().path), missing,
                                      f"crop y={y} x={x} needs missing chunks"), "crop")  # fmt: skip
                log.warning(
                    "skipping crop %s y=%d x=%d: missing chunks %s", im.source, y, x, (missing or [])[:4]
                )
                continue
            ok.append((y, x, item))
        if not ok:
            return
        if len(ok) > 1:  # windows sharing chunks: each chunk decoded once
            crops = self._safe(im, lambda: read_windows(im, [(y, x) for y, x, _ in ok], c))
            if crops is not None:
                for (y, x, item), data in zip(ok, crops):
                    crop = self._finite(im, data, y, x)
                    if crop is not None:
                        yield self._to_tensor(crop), self._meta(im, y, x, item)
                return
        for y, x, item in ok:
            data = self._safe(im, lambda y=y, x=x: self._finite(im, im.read(y, x, c, c), y, x, raw=True))
            if data is not None:
                yield self._to_tensor(data), self._meta(im, y, x, item)

    def _safe(self, im: Image, fn: Any) -> Any:
        """Run a read; damaged data is counted, logged and recorded (policy skip) or raised (fail)."""
        try:
            return fn()
        except (IndexError, MemoryError):
            raise
        except Exception as err:  # codec / store errors of any kind: one bad chunk must not kill training
            if not decide(err, self.on_bad_data, self.nan_policy):
                raise
            self.counters["non_finite" if getattr(err, "kind", "") == "non_finite" else "bad_chunks"] += 1
            log.warning("skipping unreadable data in %s: %s: %s", im.source, type(err).__name__, err)
            self._bad(
                err if isinstance(err, BadData) else BadData("read_error", im.source, "", [], str(err)),
                "crop",
            )
            return None

    def _finite(self, im: Image, data: np.ndarray, y: int, x: int, raw: bool = False) -> np.ndarray | None:
        """The crop with the NaN policy applied (None: skipped); `raw`: let `_safe` handle the error."""
        where = f"the crop at y={y} x={x}"
        if raw:
            return check_finite(data, im.source, self.nan_policy, where)
        return self._safe(im, lambda: check_finite(data, im.source, self.nan_policy, where))

    def _bad(self, err: BadData, what: str) -> None:
        append_record(self.bad_data_log, {**err.record(), "item": what, "epoch": self.epoch})

    def _cell_crop(self, k: int, j: int) -> Iterator[Sample]:
        i, cell_id, cy, cx = self.cells[k]
        im = self.images[i]
        _, h, w = im.shape
        y, x, py, px = sampler.centred_window(cy, cx, self.crop, (h, w))
        ch, cw = min(self.crop, h), min(self.crop, w)
        if self._safe(im, lambda: im.missing_chunks(y, x, ch, cw)):
            self.counters["missing_chunks"] += 1
            return
        data = self._safe(im, lambda: self._finite(im, im.read(y, x, ch, cw), y, x, raw=True))
        if data is None:
            return
        if py or px:
            data = np.pad(data, ((0, 0), (0, py), (0, px)))
        yield self._to_tensor(data), self._meta(im, y, x, f"{self.epoch}:cell:{k}", cell_id)
