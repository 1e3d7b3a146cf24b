"""Embed fields: read and normalise each field, cut tiles or object crops, batch them through the encoder
(across fields, while the next fields are read in a background thread), and pool per field."""

from __future__ import annotations

import copy
import logging
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from cellfm.data.checked_read import BadData, check_finite, decide
from cellfm.data.stores import Image

from .config import EmbedConfig
from .encoder import Encoder
from .pooling import Objects, find_objects, pool_objects
from .tiling import Stitcher, pad_to_patch, tile_grid

log = logging.getLogger(__name__)


@dataclass
class FieldResult:
    """Rows of one field: X (n, F) float32, per-row columns, and the stitched patch map if computed."""

    index: int
    X: np.ndarray
    columns: dict[str, np.ndarray]
    patch_map: np.ndarray | None = None
    shape: tuple[int, int] = (0, 0)
    skipped: dict | None = None  # why the field gave no rows (damaged data), see embed.bad_fields


def read_field(image: Image, nan_policy: str = "error") -> torch.Tensor:
    """The whole (C, H, W) field as a tensor (integers kept as integers for exact percentiles)."""
    arr = check_finite(image.read_full(), image.source, nan_policy, f"level {image.level}")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    elif arr.dtype.kind in "ui":
        arr = arr.astype(np.int32 if arr.dtype.itemsize <= 2 else np.float64)
    else:
        arr = arr.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr))


def read_labels(image: Image, labels: Image) -> np.ndarray:
    """The (H, W) labels plane of a field; a labels image of another size is an error naming both."""
    _, h, w = image.shape
    lc, lh, lw = labels.level_shape()
    if (lh, lw) != (h, w) or lc != 1:
        raise ValueError(
            f"labels {labels.source} (level {labels.level}) has shape {(lc, lh, lw)} but image {image.source} "
            f"has {(h, w)} pixels at level {image.level}; expected one labels channel of the same size"
        )
    lab = labels.read_full()[0]
    if lab.dtype.kind not in "iub":
        raise ValueError(f"labels {labels.source}: dtype {lab.dtype} is not an integer type")
    return lab.astype(np.int64)


@dataclass
class FieldTask:
    """One field in flight: its inputs, the items (tiles, crops) still to encode, and accumulators."""

    index: int
    image: Image
    labels: Image | None
    cfg: EmbedConfig
    want_patches: bool
    items: list[tuple[str, int, int, int, int]] = field(default_factory=list)
    pending: int = 0

    def prepare(self, input_norm, patch: int, num_features: int) -> FieldTask:
        tile, overlap, crop = self.cfg.grid(patch)
        x = read_field(self.image, self.cfg.nan_policy)
        self.hw = tuple(x.shape[-2:])
        x = input_norm(x[None])[0]
        self.padded = pad_to_patch(x, patch)
        cfg = self.cfg
        self.objects: Objects | None = None
        if cfg.level == "cell":
            self.objects = self._objects(read_labels(self.image, self.labels))
        tiled = cfg.level in ("field", "tile") or cfg.pooling != "crop" or self.want_patches
        if tiled:
            ph, pw = self.padded.shape[-2:]
            self.items += [("tile", *w) for w in tile_grid(ph, pw, tile, overlap)]
            grid = (ph // patch, pw // patch)
            self.stitcher = Stitcher(grid, num_features, patch) if self._needs_map() else None
        if cfg.pooling == "crop" and len(self.objects.ids):
            m = crop // 2
            self.crop_src = torch.nn.functional.pad(x, (m, m, m, m))
            for cy, cx in np.rint(self.objects.centroid).astype(int):
                self.items.append(("crop", int(cy), int(cx), crop, crop))
        self.pending = len(self.items)
        self.tile_out: list[tuple[np.ndarray, np.ndarray]] = []
        self.crop_out: list[np.ndarray] = []
        self.patch = patch
        return self

    def _needs_map(self) -> bool:
        return (
            self.want_patches
            or self.cfg.pooling in ("mean", "mask", "mask_bilinear")
            and self.cfg.level != "tile"
        )

    def _objects(self, labels: np.ndarray) -> Objects:
        obj = find_objects(labels)
        small = obj.area < self.cfg.min_area
        src = self.image.source
        if small.any():
            log.warning("%s: dropping %d objects smaller than %d pixels (labels %s)", src, int(small.sum()),
                        self.cfg.min_area, obj.ids[small][:10].tolist())  # fmt: skip
            keep = ~small
            remap = np.cumsum(keep) - 1
            fg = keep[obj.inverse]
            obj = Objects(obj.ids[keep], obj.area[keep], obj.centroid[keep], remap[obj.inverse[fg]],
                          obj.pixels[fg])  # fmt: skip
        single = obj.ids[obj.area == 1]
        if len(single):
            log.warning("%s: %d objects of one pixel (labels %s) take the features of the patch holding "
                        "them; pass min_area to drop them", src, len(single), single[:10].tolist())  # fmt: skip
        if not len(obj.ids):
            log.warning("%s: no objects in labels image %s; the field adds no rows", src, self.labels.source)
        return obj

    def tensor(self, item: tuple[str, int, int, int, int]) -> torch.Tensor:
        kind, y, x, h, w = item
        src = self.padded if kind == "tile" else self.crop_src
        return src[:, y : y + h, x : x + w]

    def receive(self, item: tuple[str, int, int, int, int], cls: np.ndarray, patches: np.ndarray) -> None:
        if item[0] == "tile":
            if self.stitcher is not None:
                self.stitcher.add(item[1], item[2], patches)
            if self.cfg.level in ("field", "tile"):
                self.tile_out.append((cls, patches.reshape(-1, patches.shape[-1]).mean(0)))
        else:
            self.crop_out.append(cls)
        self.pending -= 1

    def finish(self, num_features: int) -> FieldResult:
        cfg, (h, w) = self.cfg, self.hw
        pmap = self.stitcher.result() if getattr(self, "stitcher", None) is not None else None
        tiles = [it for it in self.items if it[0] == "tile"]
        if cfg.level == "field":
            if cfg.pooling == "cls":
                vec = np.mean([c for c, _ in self.tile_out], axis=0)
            else:
                vec = pmap.reshape(-1, pmap.shape[-1]).mean(0)
            X = vec[None]
            cols = {"y": np.array([h / 2]), "x": np.array([w / 2]), "cell_id": np.array([""])}
        elif cfg.level == "tile":
            X = np.stack([c if cfg.pooling == "cls" else m for c, m in self.tile_out])
            cy = np.array([min(y + th / 2, h) for _, y, _, th, _ in tiles])
            cx = np.array([min(x + tw / 2, w) for _, _, x, _, tw in tiles])
            cols = {"y": cy, "x": cx, "tile": np.arange(len(tiles)), "cell_id": np.array([""] * len(tiles))}
        else:
            obj = self.objects
            if cfg.pooling == "crop":
                X = np.stack(self.crop_out) if self.crop_out else np.zeros((0, num_features), np.float32)
            else:
                X = pool_objects(pmap, obj, self.patch, cfg.pooling)
            cols = {"y": obj.centroid[:, 0], "x": obj.centroid[:, 1], "area": obj.area,
                    "cell_id": obj.ids.astype(str)}  # fmt: skip
        X = np.asarray(X, dtype=np.float32).reshape(-1, num_features)
        return FieldResult(self.index, X, cols, pmap if self.want_patches else None, (h, w))


def embed_fields(
    jobs: Iterable[tuple[int, Image, Image | None]],
    encoder: Encoder,
    cfg: EmbedConfig,
    input_norm,
    want_patches: bool = False,
) -> Iterator[FieldResult]:
    """Yield one `FieldResult` per field, in order; batches mix tiles of consecutive fields."""
    nf, patch = encoder.num_features, encoder.patch_size

    def prepare(job: tuple[int, Image, Image | None]) -> FieldTask:
        index, image, labels = job
        # copies open their own handles, dropped with the task: memory stays flat over many fields
        image, labels = copy.copy(image), copy.copy(labels)
        try:
            return FieldTask(index, image, labels, cfg, want_patches).prepare(input_norm, patch, nf)
        except BadData as err:  # damaged / non-finite data: skip the field (recorded) or stop
            if not decide(err, cfg.on_bad_data, cfg.nan_policy):
                raise
            from .bad_fields import SkippedField

            return SkippedField(index, err, cfg.level)

    in_flight: deque[FieldTask] = deque()
    batch: list[tuple[FieldTask, tuple]] = []

    def flush() -> None:
        if not batch:
            return
        x = torch.stack([task.tensor(item) for task, item in batch]).float()
        cls, patches = encoder(x)
        cls_np, patches_np = cls.numpy(), patches.numpy()
        for k, (task, item) in enumerate(batch):
            task.receive(item, cls_np[k], patches_np[k])
        batch.clear()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cellfm-read") as pool:
        ahead: deque = deque()
        jobs_iter = iter(jobs)
        for job in jobs_iter:  # keep `prefetch` fields being read while the model runs
            ahead.append(pool.submit(prepare, job))
            if len(ahead) > cfg.prefetch:
                break
        while ahead:
            task = ahead.popleft().result()
            nxt = next(jobs_iter, None)
            if nxt is not None:
                ahead.append(pool.submit(prepare, nxt))
            for item in task.items:
                shape = (item[3], item[4])
                if batch and (len(batch) >= cfg.batch_size or shape != tuple(batch[0][1][3:5])):
                    flush()
                batch.append((task, item))
            in_flight.append(task)
            if len(batch) >= cfg.batch_size:
                flush()
            while in_flight and in_flight[0].pending == 0:
                yield in_flight.popleft().finish(nf)
        flush()
        while in_flight:
            yield in_flight.popleft().finish(nf)
