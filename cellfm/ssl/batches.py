"""The training batch stream: store crops -> multi-crop -> iBOT masks, deterministic per step.

Each sample's augmentations are seeded from (run seed, the sample's item id) and each batch's masks
from (run seed, its first item id), so the batch of step s is the same whatever happened before:
a resumed run replays exactly the batches an uninterrupted run would have seen. Resuming mid-epoch
reads the epoch's earlier crops again (which crops are skipped for missing data or background
depends on them) but neither augments nor collates them.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cellfm.data import CropDataset
from cellfm.transforms import MaskCollator, MultiCrop

from .config import SSLConfig

SKIPPED = "skipped_for_resume"


def stable_seed(*parts: Any) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


class MultiCropStream(IterableDataset):
    """Crops from a CropDataset turned into multi-crop dicts (with the crop's metadata)."""

    def __init__(self, crops: CropDataset, multicrop: MultiCrop, seed: int, batch_size: int = 1):
        super().__init__()
        self.crops, self.multicrop, self.seed = crops, multicrop, seed
        self.batch_size = batch_size
        self.skip_batches = 0  # the epoch's first batches (all workers) to pass over unaugmented

    def set_epoch(self, epoch: int) -> None:
        self.crops.set_epoch(epoch)

    def _samples_to_skip(self) -> int:
        """This worker's share of the first `skip_batches` batches: the DataLoader takes whole batches
        from its workers in turn (batch i from worker i % W)."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        own = -(-(self.skip_batches - worker) // workers) if self.skip_batches > worker else 0
        return own * self.batch_size

    def __iter__(self) -> Iterator[dict]:
        skip = self._samples_to_skip()
        for n, (x, meta) in enumerate(self.crops):
            if n < skip:
                yield {"item": meta["item"], SKIPPED: True}
                continue
            g = torch.Generator().manual_seed(stable_seed(self.seed, meta["item"]))
            out = self.multicrop(x, generator=g)
            out["item"] = meta["item"]
            yield out


class SeededCollate:
    """MaskCollator whose generator is re-seeded per batch from its first item."""

    def __init__(self, collator: MaskCollator, seed: int):
        self.collator, self.seed = collator, seed

    def __call__(self, samples: list[dict]) -> dict:
        if samples[0].get(SKIPPED):
            return {SKIPPED: True}
        self.collator.generator = torch.Generator().manual_seed(stable_seed(self.seed, samples[0]["item"]))
        return self.collator([{k: v for k, v in s.items() if k != "item"} for s in samples])


class BatchStream:
    """Infinite iterator of collated batches for one rank, starting at any global step."""

    def __init__(self, cfg: SSLConfig, sources: list[str], rank: int = 0, world_size: int = 1):
        d, a = cfg.data, cfg.augment
        self.crops = CropDataset(
            sources,
            crop_size=d.field_crop_size,
            crops_per_epoch=d.crops_per_epoch,
            crops_per_field=d.crops_per_field,
            level=d.level,
            weighting=d.weighting,
            foreground=d.foreground,
            threshold=d.threshold,
            min_foreground=d.min_foreground,
            channels=d.channels,
            seed=cfg.train.seed,
            rank=rank,
            world_size=world_size,
            curation=d.curation,
            curation_sha256=d.curation_sha256,
        )
        if self.crops.curation is not None:  # the resolved config records which curation was used
            d.curation_sha256 = self.crops.curation.sha256
        self.channels = list(self.crops.channels)
        self.multicrop = MultiCrop.from_config(a)
        self.stream = MultiCropStream(
            self.crops, self.multicrop, cfg.train.seed, cfg.train.batch_size_per_device
        )
        self.collate = SeededCollate(MaskCollator.from_config(a), cfg.train.seed)
        self.batch_size = cfg.train.batch_size_per_device
        self.num_workers = d.num_workers
        self.steps_per_epoch = d.crops_per_epoch // (self.batch_size * world_size)
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"data.crops_per_epoch ({d.crops_per_epoch}) is smaller than one global batch "
                f"({self.batch_size} x {world_size} processes)"
            )

    def from_step(self, step: int) -> Iterator[dict]:
        epoch, skip = divmod(step, self.steps_per_epoch)
        while True:
            self.stream.set_epoch(epoch)
            self.stream.skip_batches = skip
            loader = DataLoader(
                self.stream,
                batch_size=self.batch_size,
                collate_fn=self.collate,
                num_workers=self.num_workers,
                drop_last=True,
                persistent_workers=False,
            )
            for i, batch in enumerate(loader):
                if i >= self.steps_per_epoch:
                    break
                if i >= skip:
                    if batch.get(SKIPPED):
                        raise RuntimeError(
                            f"batch {i} of epoch {epoch} was skipped but is needed (skip {skip})"
                        )
                    yield batch
            epoch, skip = epoch + 1, 0
