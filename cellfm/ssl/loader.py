"""A training data path that lives for the run and keeps the accelerator fed.

One DataLoader with persistent workers streams every data epoch (no rebuild per
`data.crops_per_epoch` crops, so each worker computes a field's foreground mask once). Each worker
yields whole batches tagged with their epoch:

- ``augment.device`` cpu: today's per-sample `MultiCrop` in the workers, collated with iBOT masks;
- batched (cuda / device): the workers only read raw regions in the stored dtype (uint16 is carried
  bit for bit as int16, which every pinned-memory and device kernel handles) and draw the iBOT masks;
  `BatchedMultiCrop` augments the whole batch on the training device.

Batches go through pinned memory on CUDA and are copied to the device on a side stream one step
ahead. The batch of a step is fixed by (seed, its items), as before: a resumed run replays the
batches of an uninterrupted one with the same number of workers.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cellfm.data import CropDataset
from cellfm.transforms import MaskCollator, MultiCrop
from cellfm.transforms.batched import BatchedMultiCrop, widen

from .empty_data import MAX_EMPTY_EPOCHS, no_usable_crops

log = logging.getLogger("cellfm.pretrain")
SKIPPED = "skipped_for_resume"
TAG, END = "_epoch_worker_index", "_end_of_epoch"
RAW = "raw_regions"
TRAINING_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def stable_seed(*parts: Any) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


def _where(meta: dict) -> str:
    return f"{meta['source']} (field {meta['field']}, y={meta['y']}, x={meta['x']})"


def own_skip(skip: int, worker: int, workers: int) -> int:
    """Worker `worker`'s share of an epoch's first `skip` batches (batch i comes from worker i % W)."""
    return -(-(skip - worker) // workers) if skip > worker else 0


class EpochBatches(IterableDataset):
    """Endless whole batches, epoch after epoch from `start_epoch`, each tagged with (epoch, worker,
    index); after its last batch of an epoch a worker sends an end marker (``END`` = its count)."""

    def __init__(self, crops: CropDataset, batch_size: int, make_batch, start_epoch: int = 0, skip: int = 0):
        super().__init__()
        self.crops, self.batch_size, self.make_batch = crops, batch_size, make_batch
        self.start_epoch, self.skip = start_epoch, skip

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, skip = self.start_epoch, own_skip(self.skip, worker, workers)
        while True:
            self.crops.set_epoch(epoch)
            samples, done = [], 0
            for sample in self.crops:
                samples.append(sample)
                if len(samples) < self.batch_size:
                    continue
                batch = {SKIPPED: True} if done < skip else self.make_batch(samples)
                yield {**batch, TAG: (epoch, worker, done)}
                samples, done = [], done + 1
            yield {END: done, TAG: (epoch, worker, done)}
            epoch, skip = epoch + 1, 0


class CollatedBatch:
    """Worker side of the CPU path: per-sample MultiCrop (seeded per item) + masks (seeded per batch)."""

    def __init__(self, multicrop: MultiCrop, collate, seed: int):
        self.multicrop, self.collate, self.seed = multicrop, collate, seed

    def __call__(self, samples: list) -> dict:
        out = []
        for x, meta in samples:
            g = torch.Generator().manual_seed(stable_seed(self.seed, meta["item"]))
            try:
                crops = self.multicrop(x, generator=g)
            except ValueError as err:
                raise ValueError(f"{_where(meta)}: {err}") from err
            crops["item"] = meta["item"]
            out.append(crops)
        return self.collate(out)


class RawBatch:
    """Worker side of the batched path: raw regions stacked in the stored dtype, iBOT masks, names."""

    def __init__(self, collator: MaskCollator, seed: int):
        self.collator, self.seed = collator, seed

    def __call__(self, samples: list) -> dict:
        arrays = [x.numpy() for x, _ in samples]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(
                f"regions of one batch differ in shape: {sorted(shapes)} ({_where(samples[0][1])})"
            )
        raw = np.stack(arrays)  # numpy promotes mixed integer dtypes (uint8 + uint16 -> uint16)
        native = str(raw.dtype)
        if raw.dtype == np.uint16:
            raw = raw.view(np.int16)
        elif raw.dtype == np.uint32:
            raw = raw.view(np.int32)
        elif raw.dtype.kind == "f" and raw.dtype != np.float32:
            raw = raw.astype(np.float32)
        first = samples[0][1]["item"]
        self.collator.generator = torch.Generator().manual_seed(stable_seed(self.seed, first))
        return {
            RAW: torch.from_numpy(raw),
            "native_dtype": native,
            "names": [_where(m) for _, m in samples],
            "augment_seed": stable_seed(self.seed, "device", first),
            **self.collator.masks(2 * len(samples)),
        }


class DeviceAugment:
    """Training-device side of the batched path: raw batch -> the collated batch the SSL step eats."""

    def __init__(self, batched: BatchedMultiCrop, device: torch.device):
        self.batched, self.device = batched, device
        self.generator = torch.Generator(device=device)

    def __call__(self, batch: dict) -> dict:
        native = getattr(torch, batch["native_dtype"])
        x = widen(batch[RAW], native)
        self.generator.manual_seed(batch["augment_seed"])
        crops = self.batched(x, self.generator, names=batch["names"], native_dtype=native)
        out = {k: v for k, v in batch.items() if k not in (RAW, "native_dtype", "names", "augment_seed")}
        out["collated_global_crops"] = crops["global_crops"]
        out["collated_local_crops"] = crops["local_crops"]
        if "channel_index" in crops:
            out["channel_index"] = crops["channel_index"]
        return out


class RunLoader:
    """Batches of one rank for a whole run: a persistent DataLoader, per-epoch step accounting,
    pinned memory and a one-step-ahead copy to the device."""

    def __init__(
        self,
        crops: CropDataset,
        make_batch,
        batch_size: int,
        steps_per_epoch: int,
        num_workers: int,
        device: torch.device,
    ):
        self.crops, self.make_batch, self.batch_size = crops, make_batch, batch_size
        self.steps_per_epoch, self.num_workers, self.device = steps_per_epoch, num_workers, device
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def _loader(self, epoch: int, skip: int) -> DataLoader:
        source = EpochBatches(self.crops, self.batch_size, self.make_batch, epoch, skip)
        return DataLoader(
            source,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.device.type == "cuda",
        )

    def host_batches(self, step: int) -> Iterator[dict]:
        """Host batches from global step `step` on. An epoch's batches come in the order a loader
        built for that epoch alone gave them (round robin over the workers, skipping those that
        ran out), at most steps_per_epoch of them; whatever else the workers made is dropped."""
        epoch, skip = divmod(step, self.steps_per_epoch)
        source = iter(self._loader(epoch, skip))
        workers = max(1, self.num_workers)
        held: dict[tuple[int, int], list[dict]] = {}
        ended: set[tuple[int, int]] = set()

        def take(e: int, w: int) -> dict | None:
            """Worker w's next batch of epoch e (None once it has none left), holding others."""
            while not held.get((e, w)) and (e, w) not in ended:
                batch = next(source)
                be, bw, _ = batch.pop(TAG)
                if be < e:
                    continue  # an epoch already complete
                if END in batch:
                    ended.add((be, bw))
                else:
                    held.setdefault((be, bw), []).append(batch)
            return held[(e, w)].pop(0) if held.get((e, w)) else None

        empty = 0
        while True:
            k, active = 0, list(range(workers))
            while active and k < self.steps_per_epoch:
                for w in list(active):
                    batch = take(epoch, w)
                    if batch is None:
                        active.remove(w)
                        continue
                    if batch.get(SKIPPED):
                        if k >= skip:
                            raise RuntimeError(
                                f"batch {k} of epoch {epoch} was skipped but is needed (skip {skip})"
                            )
                    elif k >= skip:
                        yield batch
                    k += 1
                    if k >= self.steps_per_epoch:
                        break
            empty = empty + 1 if k == 0 else 0  # no batch at all: no crop is usable, stop spinning
            if empty >= MAX_EMPTY_EPOCHS:
                raise no_usable_crops(self.crops, empty)
            for key in [key for key in held if key[0] <= epoch]:
                del held[key]
            ended = {key for key in ended if key[0] > epoch}
            epoch, skip = epoch + 1, 0

    def _copy(self, batch: dict) -> dict:
        if self._stream is None:
            return batch
        with torch.cuda.stream(self._stream):
            return {
                k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
            }

    def from_step(self, step: int) -> Iterator[dict]:
        """Batches on the training device (copy issued one step ahead); pass each through `ready`."""
        host = self.host_batches(step)
        if self._stream is None:  # nothing to overlap with in this process: workers prefetch
            yield from host
            return
        nxt = self._copy(next(host))
        while True:
            cur, nxt = nxt, self._copy(next(host))
            yield cur

    def ready(self, batch: dict) -> dict:
        """Make the current stream wait for `batch`'s copy (CUDA); keeps its memory alive there."""
        if self._stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self._stream)
            for v in batch.values():
                if torch.is_tensor(v) and v.is_cuda:
                    v.record_stream(current)
        return batch


def check_stores(crops: CropDataset, augment) -> None:
    """Refuse stores the recipe cannot train on, naming them: a channel count other than the
    recipe's, or dtypes that `range` normalisation would mix up. (Fields smaller than the region
    each sample reads: `empty_data.check_field_sizes`, called first.)"""
    want = augment.channels.num_channels
    have = len(crops.channels)
    if want is not None and have != want and not augment.channels.bag_of_channels:
        stores = sorted({im.source for im in crops.images})[:3]
        raise ValueError(
            f"{stores}: {have} channels {list(crops.channels)}, but augment.channels.num_channels is {want}"
        )
    if augment.input_norm.mode == "range":
        dtypes = {}
        for im in crops.images:
            dtypes.setdefault(str(im.dtype), im.source)
        if len(dtypes) > 1:
            raise ValueError(
                f"input_norm mode 'range' divides by the dtype's maximum, but the stores mix dtypes "
                f"{dtypes}; convert them to one dtype or use percentile normalisation"
            )
