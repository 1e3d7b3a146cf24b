"""The run-long data path: persistent workers, raw host batches + device-side augmentation,
resume, num_workers auto, throughput metrics, bad stores."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch
from cellfm.transforms import MaskCollator, MultiCrop
from cellfm.transforms.batched import BatchedMultiCrop

from cellfm.data import workers as workers_module
from cellfm.data.workers import resolve_augment_device, resolve_num_workers
from cellfm.ssl.batches import BatchStream
from cellfm.ssl.config import load_ssl_config
from cellfm.ssl.loader import RAW, CollatedBatch, DeviceAugment, RawBatch
from cellfm.ssl.throughput import DataWait
from cellfm.ssl.train import Trainer, pretrain

from .test_ssl_train import TINY


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    from cellfm.data.samples import write_sample_plate

    return write_sample_plate(tmp_path_factory.mktemp("plate") / "samples.ome.zarr", timelapse_frames=2)


def _cfg(*extra: str):
    return load_ssl_config("cpu_tiny", TINY + list(extra))


def test_batched_path_trains_end_to_end_and_logs_honest_throughput(plate, tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(_cfg("augment.device=device", "train.epochs=1"), [plate], out)
    assert trainer.data.augment_on == "batched" and trainer.data.crops.native
    trainer.train()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for r in rows:
        assert r["data_wait_s"] >= 0 and r["compute_s"] > 0 and np.isfinite(r["loss"])
        assert r["images_per_s"] == pytest.approx(4 / (r["data_wait_s"] + r["compute_s"]))


def test_raw_batches_are_native_and_prepare_gives_the_collated_layout(plate):
    cfg = _cfg("augment.device=device")
    stream = BatchStream(cfg, [plate])
    raw = next(stream.from_step(0))
    assert raw[RAW].dtype == torch.int16 and raw["native_dtype"] == "uint16"  # uint16 bit for bit
    assert raw[RAW].shape == (4, 1, 64, 64) and raw["collated_masks"].shape == (8, 16)
    batch = stream.prepare(dict(raw))
    assert RAW not in batch and batch["collated_global_crops"].shape == (8, 1, 32, 32)
    assert batch["collated_local_crops"].shape == (8, 1, 16, 16)
    # the CPU path draws the same iBOT masks for the same batch
    cpu = next(BatchStream(_cfg(), [plate]).from_step(0))
    for key in ("collated_masks", "mask_indices_list", "masks_weight", "n_masked_patches"):
        assert torch.equal(cpu[key], batch[key]), key


@pytest.mark.parametrize("path", ["cpu", "device"])
def test_resume_replays_the_uninterrupted_batches_with_persistent_workers(plate, path):
    cfg = _cfg("data.crops_per_epoch=12", "train.batch_size_per_device=2", "data.num_workers=2",
               f"augment.device={path}")  # fmt: skip
    stream = BatchStream(cfg, [plate])
    full = stream.from_step(0)
    reference = [stream.prepare(next(full)) for _ in range(14)]  # 6 steps per epoch: into epoch 3
    for start in (5, 7, 13):
        again = BatchStream(cfg, [plate])
        batch = again.prepare(next(again.from_step(start)))
        for key, value in reference[start].items():
            if torch.is_tensor(value):
                assert torch.equal(batch[key], value), (path, start, key)


def test_loader_is_built_once_and_foreground_masks_once_per_field_and_worker(plate, tmp_path, monkeypatch):
    """Three data epochs, two workers: one DataLoader; each worker computes a field's mask once."""
    from cellfm.data import sampler
    from cellfm.ssl import loader

    log_file = tmp_path / "masks.txt"
    original_mask = sampler.foreground_mask

    def counting_mask(image, *args, **kwargs):
        with open(log_file, "a") as fh:  # workers are forked: they inherit this patch
            fh.write(f"{os.getpid()} {image.source}\n")
        return original_mask(image, *args, **kwargs)

    monkeypatch.setattr(sampler, "foreground_mask", counting_mask)
    built = []
    original_loader = loader.RunLoader._loader
    monkeypatch.setattr(
        loader.RunLoader, "_loader", lambda self, *a: built.append(1) or original_loader(self, *a)
    )
    cfg = _cfg("data.num_workers=2", "augment.device=device")
    stream = BatchStream(cfg, [plate])
    batches = stream.from_step(0)
    for _ in range(3 * stream.steps_per_epoch):
        next(batches)
    assert built == [1]
    lines = log_file.read_text().splitlines()
    assert len(lines) == len(set(lines)) and len({line.split()[0] for line in lines}) == 2


def test_num_workers_auto_and_augment_device_are_decided_in_one_place(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(24)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert workers_module.cores_per_local_rank() == 6
    assert resolve_num_workers("auto", "cuda") == 5 and resolve_num_workers("auto", "cpu") == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert resolve_num_workers("auto", "cuda") == workers_module.MAX_AUTO_WORKERS
    assert resolve_num_workers(3, "cuda") == 3
    assert resolve_augment_device("auto", "cuda") == "batched"
    assert resolve_augment_device("auto", "cpu") == "cpu"
    assert resolve_augment_device("device", "cpu") == "batched"
    with pytest.raises(ValueError, match="augment.device: cuda, but training runs on cpu"):
        resolve_augment_device("cuda", "cpu")
    with pytest.raises(ValueError, match="augment.device must be one of"):
        _cfg("augment.device=gpu")
    with pytest.raises(ValueError, match="data.num_workers must be an integer >= 0 or 'auto'"):
        _cfg("data.num_workers=many")
    for recipe in ("train/vits14", "train/vitl14", "train/cellpainting5"):
        assert load_ssl_config(recipe, ["model.pretrained=null"]).data.num_workers == "auto", recipe


def test_data_bound_warning_once(caplog):
    wait = DataWait(num_workers=2, augment_on="cpu", window=10)
    with caplog.at_level(logging.WARNING, logger="cellfm.pretrain"):
        for step in range(9):
            wait.update(0.9, 0.1, step)
        assert not caplog.records  # not a full window yet
        for step in range(9, 30):
            frac = wait.update(0.9, 0.1, step)
    assert frac == pytest.approx(0.9)
    assert (
        len(caplog.records) == 1
        and "data-bound: 90%" in caplog.text
        and "augment.device: cuda" in caplog.text
    )
    assert DataWait(2, "batched", window=3).update(0.1, 0.9, 0) == pytest.approx(0.1)


def test_non_finite_pixels_name_the_store_on_both_paths():
    meta = {"source": "plates/p1.ome.zarr/B/3/0", "field": "0", "y": 16, "x": 32, "item": "0:0:0"}
    x = torch.rand(1, 40, 40)
    x[0, 5, 5] = float("inf")
    mc = MultiCrop(16, 8, 2)
    collator = MaskCollator(16, 8)
    with pytest.raises(ValueError, match=r"plates/p1.ome.zarr/B/3/0 \(field 0, y=16, x=32\).*NaN/Inf"):
        CollatedBatch(mc, lambda samples: samples, 0)([(x, meta)])
    raw = RawBatch(collator, 0)([(x, meta), (torch.rand(1, 40, 40), meta)])
    with pytest.raises(ValueError, match=r"plates/p1.ome.zarr/B/3/0 \(field 0, y=16, x=32\): region"):
        DeviceAugment(BatchedMultiCrop(mc), torch.device("cpu"))(raw)


def test_stores_that_do_not_fit_the_recipe_are_refused(plate):
    with pytest.raises(
        ValueError, match=r"samples.ome.zarr.*: 1 channels \[.DNA.\], but augment.channels.num_channels is 3"
    ):
        BatchStream(_cfg("augment.channels.num_channels=3"), [plate])
    with pytest.raises(
        ValueError, match=r"data.field_crop_size=4096 is larger than every field of .*samples.ome.zarr"
    ):
        BatchStream(_cfg("data.field_crop_size=4096"), [plate])


def test_pretrain_cpu_default_keeps_the_per_sample_path(plate, tmp_path):
    last = pretrain(_cfg("train.epochs=1"), [plate], tmp_path / "cpu")
    assert {"data_wait_s", "compute_s"} <= set(last)
    assert Trainer(_cfg(), [plate], tmp_path / "x").data.augment_on == "cpu"
