"""Typed augmentation config: shipped recipes load, unknown keys and bad types are named."""

import pytest
import torch
import yaml
from cellfm.transforms import (
    RECIPES,
    AugmentConfig,
    MaskCollator,
    MultiCrop,
    augment_config_from_dict,
    load_augment_config,
)


@pytest.mark.parametrize("name", RECIPES)
def test_shipped_recipes_load_and_run(name):
    cfg = load_augment_config(name)
    assert isinstance(cfg, AugmentConfig)
    mc = MultiCrop.from_config(cfg, seed=0)
    c = cfg.channels.num_channels or 3
    x = torch.randint(0, 60000, (c, 240, 240)).to(torch.uint16)
    out = mc(x)
    g, loc = cfg.crops.global_crops_size, cfg.crops.local_crops_size
    out_c = 1 if cfg.channels.bag_of_channels else c
    assert out["global_crops"][0].shape == (out_c, g, g) and out["local_crops"][0].shape == (out_c, loc, loc)
    assert MaskCollator.from_config(cfg)([out, out])["collated_masks"].shape == (4, (g // 14) ** 2)


def test_recipe_specifics():
    hpa = load_augment_config("hpa4")
    assert hpa.channels.protected == [1] and hpa.channels.rescale_p == 0.2 and hpa.channels.num_channels == 4
    assert load_augment_config("bag_of_channels").channels.bag_of_channels
    assert load_augment_config("nuclei1").channels.num_channels == 1
    assert load_augment_config("cellpainting5").channels.names == ["DNA", "ER", "RNA", "AGP", "Mito"]


def test_roundtrip_through_yaml(tmp_path):
    cfg = load_augment_config("hpa4")
    path = tmp_path / "aug.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert load_augment_config(path) == cfg
    assert augment_config_from_dict({}) == AugmentConfig()


@pytest.mark.parametrize(
    "data,message",
    [
        ({"crops": {"global_crop_size": 224}}, r"unknown config key 'crops.global_crop_size'"),
        ({"intensity": {"blur": {"probability": 0.5}}}, r"unknown config key 'intensity.blur.probability'"),
        ({"colour_jitter": 0.4}, r"unknown config key 'colour_jitter'"),
        ({"crops": {"global_crops_scale": [0.3]}}, r"'crops.global_crops_scale' must be a list of 2 values"),
        ({"crops": {"local_crops_number": 2.5}}, r"'crops.local_crops_number' must be an integer"),
        ({"geometry": {"dihedral": "yes"}}, r"'geometry.dihedral' must be true or false"),
        ({"channels": {"names": "DNA"}}, r"'channels.names' must be a list"),
        ({"intensity": "strong"}, r"section 'intensity' must be a mapping"),
        ({"input_norm": {"mode": "minmax"}}, r"normalisation mode must be one of"),
        ({"channels": {"num_channels": 2, "protected": [3]}}, r"channels.protected \[3\] out of range"),
        ({"masking": {"patch_size": 15}}, r"global_crops_size 224 must be a multiple of patch_size 15"),
    ],
)
def test_bad_keys_and_values_are_named(data, message):
    with pytest.raises(ValueError, match=message):
        augment_config_from_dict(data)


def test_bad_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("crops:\n  global_crops_size: 224\n  sizes: 3\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown config key 'crops.sizes'"):
        load_augment_config(path)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_augment_config(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="unknown augmentation recipe 'rgb'"):
        load_augment_config("rgb")
