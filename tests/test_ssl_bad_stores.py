"""Stores that do not fit the recipe, on both training data paths (per-sample MultiCrop in the
workers, `augment.device: cpu`; raw regions + batched augmentation, `augment.device: device`):
a clear error naming the stores, or the documented behaviour."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from cellfm.data.writer import create_plate, write_image
from cellfm.ssl.batches import BatchStream
from cellfm.ssl.config import load_ssl_config

from .test_ssl_train import TINY

PATHS = ["cpu", "device"]


@pytest.fixture(scope="module")
def mixed_plate(tmp_path_factory):
    """A/1 uint16 and A/2 uint8 fields of 80 x 80 px (1 channel), A/3 a 40 x 40 px uint16 field."""
    path = str(tmp_path_factory.mktemp("mixed") / "mixed.ome.zarr")
    root = create_plate(path, "mixed", {"A/1": ["0"], "A/2": ["0"], "A/3": ["0"]}, "0.4")
    rng = np.random.default_rng(0)
    fields = {"A/1": (80, np.uint16, 4000), "A/2": (80, np.uint8, 250), "A/3": (40, np.uint16, 4000)}
    for well, (size, dtype, top) in fields.items():
        img = rng.integers(0, top, (1, size, size)).astype(dtype)
        write_image(root[well].require_group("0"), img, ["DNA"], "0.4", chunk=32, min_level_size=size)
    return path


def _stream(plate: str, path: str, *extra: str) -> BatchStream:
    cfg = load_ssl_config("cpu_tiny", [*TINY, f"augment.device={path}", "data.foreground=false", *extra])
    return BatchStream(cfg, [plate])


def _batch(stream: BatchStream) -> dict:
    return stream.prepare(next(stream.from_step(0)))


@pytest.mark.parametrize("path", PATHS)
def test_channel_count_other_than_the_recipe_names_the_store(mixed_plate, path):
    with pytest.raises(ValueError, match=r"mixed.ome.zarr/A/1/0.*1 channels \['DNA'\].*num_channels is 3"):
        _stream(mixed_plate, path, "augment.channels.num_channels=3", "model.in_chans=3")


@pytest.mark.parametrize("path", PATHS)
def test_range_normalisation_refuses_mixed_dtypes_naming_the_stores(mixed_plate, path):
    with pytest.raises(ValueError, match=r"mix dtypes \{'uint16': '.*A/1/0', 'uint8': '.*A/2/0'\}"):
        _stream(mixed_plate, path, "augment.input_norm.mode=range")


@pytest.mark.parametrize("path", PATHS)
def test_mixed_dtypes_train_with_percentile_normalisation(mixed_plate, path):
    """The documented behaviour: per-field percentiles make uint8 and uint16 fields comparable;
    the raw batch carries them in one (promoted) dtype."""
    stream = _stream(mixed_plate, path)
    assert stream.augment_on == ("cpu" if path == "cpu" else "batched")
    batch = _batch(stream)
    crops = batch["collated_global_crops"]
    assert crops.shape[1:] == (1, 32, 32) and torch.isfinite(crops).all() and crops.std() > 0.1


@pytest.mark.parametrize("path", PATHS)
def test_a_field_smaller_than_the_region_is_skipped_with_a_warning(mixed_plate, path, caplog):
    """A/3 (40 px) cannot hold the 64 px region: skipped, named in a warning; the others train."""
    stream = _stream(mixed_plate, path)
    batches = stream.from_step(0)
    with caplog.at_level(logging.WARNING, logger="cellfm"):
        for _ in range(4 * stream.steps_per_epoch):  # enough epochs to draw every field
            batch = stream.prepare(next(batches))
            assert batch["collated_local_crops"].shape[1:] == (1, 16, 16)
    assert "A/3/0: 40x40 is smaller than the 64px crop" in caplog.text
    assert stream.crops.counters["missing_or_bad_fields"] == 1  # judged once, then never drawn again
    assert not len(stream.crops._positions[2])


def test_a_region_smaller_than_the_global_crops_is_a_config_error():
    with pytest.raises(ValueError, match=r"data.field_crop_size 24 is smaller than the global crops \(32\)"):
        load_ssl_config("cpu_tiny", [*TINY, "data.field_crop_size=24"])


@pytest.fixture(scope="module")
def nan_plate(tmp_path_factory):
    """A/1: a float32 80 x 80 px field with a 3 x 3 NaN/Inf patch."""
    path = str(tmp_path_factory.mktemp("nan") / "nan.ome.zarr")
    root = create_plate(path, "nan", {"A/1": ["0"]}, "0.4")
    img = np.random.default_rng(1).random((1, 80, 80)).astype(np.float32)
    img[0, 30:33, 30:33] = np.nan
    img[0, 31, 31] = np.inf
    write_image(root["A/1"].require_group("0"), img, ["DNA"], "0.4", chunk=32, min_level_size=80)
    return path


@pytest.mark.parametrize("path", PATHS)
def test_non_finite_pixels_in_a_store_error_by_default_or_are_zeroed(nan_plate, path):
    """Every 64 px region of the 80 px field holds the patch: data.nan_policy error names the store
    and the crop; zero trains on finite crops, on both paths."""
    with pytest.raises(ValueError, match=r"nan.ome.zarr/A/1/0.*9 NaN/Inf pixels"):
        _batch(_stream(nan_plate, path))
    crops = _batch(_stream(nan_plate, path, "data.nan_policy=zero"))["collated_global_crops"]
    assert torch.isfinite(crops).all() and crops.std() > 0.1
