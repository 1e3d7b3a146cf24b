"""The training batch stream: store crops -> multi-crop -> iBOT masks, deterministic per step.

Each sample's augmentations are seeded from (run seed, the sample's item id) and each batch's masks
from (run seed, its first item id), so the batch of step s is the same whatever happened before:
a resumed run replays exactly the batches an uninterrupted run would have seen. Resuming mid-epoch
reads the epoch's earlier crops again (which crops are skipped for missing data or background
depends on them) but neither augments nor collates them. The loader itself (persistent workers,
host/device split, prefetch) is `cellfm.ssl.loader`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from cellfm.data import CropDataset
from cellfm.data.workers import resolve_augment_device, resolve_num_workers
from cellfm.transforms import MaskCollator, MultiCrop
from cellfm.transforms.batched import BatchedMultiCrop

from .config import SSLConfig
from .empty_data import check_field_sizes
from .loader import (
    RAW,
    SKIPPED,  # noqa: F401 - re-exported: the resume marker
    TRAINING_DTYPES,
    CollatedBatch,
    DeviceAugment,
    RawBatch,
    RunLoader,
    check_stores,
    stable_seed,
)


class SeededCollate:
    """MaskCollator whose generator is re-seeded per batch from its first item."""

    def __init__(self, collator: MaskCollator, seed: int):
        self.collator, self.seed = collator, seed

    def __call__(self, samples: list[dict]) -> dict:
        self.collator.generator = torch.Generator().manual_seed(stable_seed(self.seed, samples[0]["item"]))
        return self.collator([{k: v for k, v in s.items() if k != "item"} for s in samples])


class BatchStream:
    """Infinite iterator of collated batches for one rank, starting at any global step."""

    def __init__(
        self,
        cfg: SSLConfig,
        sources: list[str],
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | None = None,
    ):
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
            on_bad_data=d.on_bad_data,
            nan_policy=d.nan_policy,
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
        self.collate = SeededCollate(MaskCollator.from_config(a), cfg.train.seed)
        self.batch_size = cfg.train.batch_size_per_device
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.num_workers = resolve_num_workers(d.num_workers, self.device.type)
        self.steps_per_epoch = d.crops_per_epoch // (self.batch_size * world_size)
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"data.crops_per_epoch ({d.crops_per_epoch}) is smaller than one global batch "
                f"({self.batch_size} x {world_size} processes)"
            )
        self.augment_on = resolve_augment_device(a.device, self.device.type)
        check_field_sizes(self.crops.images, d.field_crop_size)
        check_stores(self.crops, a)
        if self.augment_on == "batched":
            self.crops.native = True
            make = RawBatch(MaskCollator.from_config(a), cfg.train.seed)
            dtype = TRAINING_DTYPES[cfg.train.precision]
            self.augment = DeviceAugment(BatchedMultiCrop(self.multicrop, dtype), self.device)
        else:
            make = CollatedBatch(self.multicrop, self.collate, cfg.train.seed)
            self.augment = None
        self.loader = RunLoader(
            self.crops, make, self.batch_size, self.steps_per_epoch, self.num_workers, self.device
        )

    def from_step(self, step: int) -> Iterator[dict]:
        """Batches from global step `step` on, from one loader that lives for the run; pass each
        through `prepare` before the SSL step."""
        return self.loader.from_step(step)

    def prepare(self, batch: dict) -> dict:
        """A batch from `from_step` ready for the SSL step: on the device, augmented (batched path)."""
        batch = self.loader.ready(batch)
        return self.augment(batch) if self.augment is not None and RAW in batch else batch
