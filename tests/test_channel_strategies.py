"""The four channel strategies: fixed C, adapted RGB weights, Bag-of-Channels, channel tokens."""

from __future__ import annotations

import pytest
import torch

import cellfm
from cellfm.models import (
    BagOfChannels,
    ChannelTokensViT,
    VisionTransformer,
    ViTArch,
    adapt_patch_embed_weight,
    build_backbone,
)

BASE = dict(embed_dim=64, depth=2, num_heads=2, patch_size=8, img_size=64, init_values=1.0)


def test_adapted_weights_preserve_the_response_to_grey_images():
    w = torch.randn(64, 3, 8, 8)
    grey = torch.randn(1, 1, 16, 16)
    rgb_out = torch.nn.functional.conv2d(grey.expand(1, 3, -1, -1), w, stride=8)
    for c in (1, 2, 5, 7):
        wc = adapt_patch_embed_weight(w, c)
        assert wc.shape == (64, c, 8, 8)
        out = torch.nn.functional.conv2d(grey.expand(1, c, -1, -1), wc, stride=8)
        assert torch.allclose(out, rgb_out, rtol=1e-5, atol=1e-4)


def test_load_rgb_checkpoint_as_five_channel_model(tmp_path):
    rgb = VisionTransformer(ViTArch(**BASE, in_chans=3)).eval()
    path = tmp_path / "rgb.pth"
    torch.save(rgb.state_dict(), path)
    five = cellfm.load_backbone(path, in_chans=5, num_heads=2).eval()
    assert five.arch.in_chans == 5
    grey = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        a = rgb.forward_features(grey.expand(-1, 3, -1, -1))["x_norm_clstoken"]
        b = five.forward_features(grey.expand(-1, 5, -1, -1))["x_norm_clstoken"]
    assert torch.allclose(a, b, atol=1e-5)


def test_bag_of_channels_concatenates_per_channel_outputs_in_order():
    model = build_backbone(ViTArch(**BASE, in_chans=1, channel_strategy="bag_of_channels")).eval()
    assert isinstance(model, BagOfChannels)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model.forward_features(x)
        singles = [model.backbone.forward_features(x[:, c : c + 1]) for c in range(3)]
    assert out["x_norm_clstoken"].shape == (2, 3 * 64)
    assert out["x_norm_patchtokens"].shape == (2, 64, 3 * 64)
    for c in range(3):
        assert torch.allclose(
            out["x_norm_clstoken"][:, c * 64 : (c + 1) * 64], singles[c]["x_norm_clstoken"], atol=1e-6
        )
        assert torch.allclose(
            out["x_norm_patchtokens"][..., c * 64 : (c + 1) * 64], singles[c]["x_norm_patchtokens"], atol=1e-6
        )
    maps = model.get_intermediate_layers(x, 1, reshape=True, return_class_token=True)
    assert maps[0][0].shape == (2, 3 * 64, 8, 8) and maps[0][1].shape == (2, 3 * 64)
    assert torch.allclose(maps[0][1], out["x_norm_clstoken"], atol=1e-6)
    # Any channel count works with one model.
    assert model(torch.randn(1, 7, 64, 64)).shape == (1, 7 * 64)


def test_bag_of_channels_from_an_rgb_checkpoint(tmp_path):
    rgb = VisionTransformer(ViTArch(**BASE, in_chans=3))
    path = tmp_path / "rgb.pth"
    torch.save(rgb.state_dict(), path)
    model = cellfm.load_backbone(path, channel_strategy="bag_of_channels", num_heads=2)
    assert isinstance(model, BagOfChannels) and model.backbone.arch.in_chans == 1
    saved = cellfm.save_backbone(model, tmp_path / "boc.safetensors", channel_names=["DNA", "actin"])
    again = cellfm.load_backbone(saved)
    assert isinstance(again, BagOfChannels)


def test_channel_tokens_attend_across_channels_and_accept_subsets():
    model = build_backbone(ViTArch(**BASE, in_chans=5, channel_strategy="channel_tokens")).eval()
    assert isinstance(model, ChannelTokensViT)
    x = torch.randn(2, 5, 64, 64)
    with torch.no_grad():
        out = model.forward_features(x)
        assert out["x_norm_channel_patchtokens"].shape == (2, 5, 64, 64)
        assert out["x_norm_patchtokens"].shape == (2, 64, 64)
        # Tokens are a set: permuting channels together with their ids changes nothing.
        perm = [3, 0, 4, 1, 2]
        permuted = model.forward_features(x[:, perm], channel_ids=perm)
        assert torch.allclose(permuted["x_norm_clstoken"], out["x_norm_clstoken"], atol=1e-5)
        # Attention crosses channels: changing channel 4 changes channel 0's tokens.
        y = x.clone()
        y[:, 4] += 1.0
        changed = model.forward_features(y)["x_norm_channel_patchtokens"][:, 0]
        assert not torch.allclose(changed, out["x_norm_channel_patchtokens"][:, 0], atol=1e-4)
        sub = model.forward_features(x[:, [1, 3]], channel_ids=[1, 3])
        assert sub["x_norm_channel_patchtokens"].shape == (2, 2, 64, 64)
        masks = torch.zeros(2, 64, dtype=torch.bool)
        masks[:, :10] = True
        assert model.forward_features(x, masks)["masks"] is masks
        assert model.get_intermediate_layers(x, 1, reshape=True)[0].shape == (2, 64, 8, 8)
    with pytest.raises(ValueError, match="outside the model's 5 channels"):
        model.forward_features(x[:, :2], channel_ids=[0, 9])
    with pytest.raises(ValueError, match="pass channel_ids"):
        model.forward_features(torch.randn(1, 6, 64, 64))


def test_channel_tokens_round_trip(tmp_path):
    model = build_backbone(ViTArch(**BASE, in_chans=4, channel_strategy="channel_tokens")).eval()
    path = cellfm.save_backbone(model, tmp_path / "ct.safetensors")
    again = cellfm.load_backbone(path).eval()
    x = torch.randn(1, 4, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), again(x))
    rgb = tmp_path / "rgb.pth"
    torch.save(VisionTransformer(ViTArch(**BASE)).state_dict(), rgb)
    with pytest.raises(ValueError, match="cannot be loaded as channel_tokens"):
        cellfm.load_backbone(rgb, channel_strategy="channel_tokens")
