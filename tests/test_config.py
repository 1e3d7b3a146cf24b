"""Typed configs: recipes by name, unknown keys rejected with a suggestion, overrides."""

from __future__ import annotations

import pytest

from cellfm.config import ConfigError, apply_overrides, from_dict, list_configs, read_yaml_config
from cellfm.models import BagOfChannels, ChannelTokensViT, VisionTransformer
from cellfm.models.config import ModelConfig, backbone_from_config


def test_default_recipe_is_shipped_and_typed():
    assert "default" in list_configs()
    cfg = from_dict(ModelConfig, read_yaml_config("default")["model"], "model")
    assert cfg == ModelConfig()


def test_misspelt_key_is_an_error_with_a_suggestion():
    with pytest.raises(
        ConfigError, match=r"unknown config key 'model.patch_szie'; did you mean 'patch_size'"
    ):
        from_dict(ModelConfig, {"patch_szie": 16}, "model")
    with pytest.raises(ConfigError, match=r"model.zzz.*expected one of"):
        from_dict(ModelConfig, {"zzz": 16}, "model")
    with pytest.raises(ConfigError, match=r"'model.patch_size' must be an integer, got 'big'"):
        from_dict(ModelConfig, {"patch_size": "big"}, "model")
    with pytest.raises(ValueError, match="channel_strategy 'bag' unknown"):
        from_dict(ModelConfig, {"channel_strategy": "bag"}, "model")


def test_overrides_and_file_paths(tmp_path):
    data = apply_overrides({"model": {"size": "small"}}, ["model.size=tiny", "model.init_values=null"])
    assert data == {"model": {"size": "tiny", "init_values": None}}
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["model.size"])
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  size: tiny\n")
    assert read_yaml_config(path)["model"]["size"] == "tiny"
    with pytest.raises(FileNotFoundError, match="neither a YAML file nor a shipped recipe"):
        read_yaml_config("no_such_recipe")


def test_overrides_parse_numbers_as_users_write_them():
    from cellfm.ssl.config import SSLConfig

    got = apply_overrides(
        {}, ["a.lr=5e-4", "a.n=1e5", "a.h=.5", "a.i=12", "a.j=-3", "a.k=1_000", "a.s=5e-4x"]
    )
    assert got["a"] == {"lr": 5e-4, "n": 1e5, "h": 0.5, "i": 12, "j": -3, "k": 1000, "s": "5e-4x"}
    assert isinstance(got["a"]["i"], int) and isinstance(got["a"]["n"], float)
    data = apply_overrides({}, ["optim.base_lr=5e-4"])
    assert from_dict(SSLConfig, data).optim.base_lr == 5e-4
    with pytest.raises(ConfigError, match="'optim.base_lr' must be a number, got 'fast'"):
        from_dict(SSLConfig, apply_overrides({}, ["optim.base_lr=fast"]))


@pytest.mark.parametrize(
    "strategy,cls,chans",
    [
        ("fixed", VisionTransformer, 5),
        ("bag_of_channels", BagOfChannels, 5),
        ("channel_tokens", ChannelTokensViT, 5),
    ],
)
def test_channel_strategy_is_selectable_in_config(strategy, cls, chans):
    import torch

    cfg = from_dict(
        ModelConfig,
        {"size": "tiny", "patch_size": 8, "img_size": 32, "in_chans": chans, "channel_strategy": strategy},
    )
    model = backbone_from_config(cfg).eval()
    assert isinstance(model, cls)
    with torch.no_grad():
        out = model.forward_features(torch.randn(1, 5, 32, 32))
    width = 192 * 5 if strategy == "bag_of_channels" else 192
    assert out["x_norm_clstoken"].shape == (1, width)
