"""Packed multi-crop forward, parameter groups and schedules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cellfm.models import ViTArch, build_backbone
from cellfm.ssl.heads import DINOHead
from cellfm.ssl.param_groups import layer_id, param_groups
from cellfm.ssl.schedules import cosine_schedule, linear_then_constant, scaled_lr

BASE = dict(embed_dim=64, depth=3, num_heads=2, patch_size=8, img_size=64, init_values=1e-5)


@pytest.mark.parametrize("strategy,chans", [("fixed", 3), ("bag_of_channels", 1), ("channel_tokens", 3)])
def test_packed_forward_equals_separate_forwards(strategy, chans):
    model = build_backbone(ViTArch(**BASE, in_chans=chans, channel_strategy=strategy)).eval()
    with torch.no_grad():
        for blk in model.modules():
            if hasattr(blk, "gamma"):
                blk.gamma.fill_(0.5)
    g, loc = torch.randn(4, 3, 64, 64), torch.randn(8, 3, 32, 32)
    masks = torch.rand(4, 64) < 0.3
    with torch.no_grad():
        packed = model.forward_features_list([g, loc], [masks, None])
        sep = [model.forward_features(g, masks), model.forward_features(loc)]
    for a, b in zip(packed, sep):
        for key in ("x_norm_clstoken", "x_norm_patchtokens"):
            assert torch.allclose(a[key], b[key], atol=1e-5), key
    assert packed[0]["masks"] is masks


def test_packed_training_with_subset_stochastic_depth_runs_and_backprops():
    model = build_backbone(ViTArch(**BASE), drop_path_rate=0.4).train()
    g, loc = torch.randn(4, 3, 64, 64), torch.randn(8, 3, 32, 32)
    outs = model.forward_features_list([g, loc])
    loss = sum(o["x_norm_clstoken"].square().mean() for o in outs)
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n != "mask_token")


def test_layerwise_decay_and_multipliers_follow_dinov2():
    backbone = build_backbone(ViTArch(**BASE))
    model = nn.ModuleDict({"backbone": backbone, "dino_head": DINOHead(64, 16, 32, 8)})
    groups = param_groups(model, depth=3, layerwise_decay=0.9, patch_embed_lr_mult=0.2)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["backbone.pos_embed"]["lr_multiplier"] == pytest.approx(0.9**4)
    assert by_name["backbone.patch_embed.proj.weight"]["lr_multiplier"] == pytest.approx(0.9**4 * 0.2)
    assert by_name["backbone.blocks.0.attn.qkv.weight"]["lr_multiplier"] == pytest.approx(0.9**3)
    assert by_name["backbone.blocks.2.mlp.fc1.weight"]["lr_multiplier"] == pytest.approx(0.9)
    assert by_name["backbone.norm.weight"]["lr_multiplier"] == pytest.approx(1.0)
    assert by_name["dino_head.mlp.0.weight"]["lr_multiplier"] == pytest.approx(1.0)
    for name in (
        "backbone.blocks.0.attn.qkv.bias",
        "backbone.blocks.1.norm1.weight",
        "backbone.blocks.1.ls1.gamma",
    ):
        assert by_name[name]["wd_multiplier"] == 0.0
    assert by_name["backbone.blocks.1.attn.qkv.weight"]["wd_multiplier"] == 1.0
    assert by_name["dino_head.last_layer.weight_v"]["is_last_layer"]
    assert not by_name["dino_head.mlp.0.weight"]["is_last_layer"]
    assert layer_id("backbone.backbone.blocks.1.attn.qkv.weight", 3, True) == 2  # Bag-of-Channels wrapper
    assert layer_id("backbone.register_tokens", 3, True) == 0


def test_schedules():
    s = cosine_schedule(1.0, 0.1, total_iters=100, warmup_iters=10, freeze_iters=5)
    assert len(s) == 100 and s[0] == 0 and s[4] == 0
    assert s[5] == 0.0 and s[14] == pytest.approx(1.0)
    assert np.all(np.diff(s[15:]) <= 1e-12) and s[-1] == pytest.approx(0.1, abs=1e-3)
    t = linear_then_constant(0.04, 0.07, 30, 50)
    assert t[0] == 0.04 and t[29] == pytest.approx(0.07) and t[-1] == 0.07 and len(t) == 50
    assert scaled_lr(0.004, 1024) == pytest.approx(0.004)
    assert scaled_lr(0.004, 256) == pytest.approx(0.002)
    with pytest.raises(ValueError, match="shorter than freeze"):
        cosine_schedule(1, 0, 5, warmup_iters=10)


def test_schedules_match_the_official_scheduler():
    """lr and last-layer lr (frozen for the first epoch, then the lr schedule itself, not a delayed
    copy) against dinov2's CosineScheduler as dinov2.train builds them."""
    from dinov2.utils.utils import CosineScheduler

    from cellfm.ssl.config import load_ssl_config
    from cellfm.ssl.train import build_schedules

    cfg = load_ssl_config(
        "default",
        [
            "train.epochs=6",
            "train.iters_per_epoch=20",
            "optim.warmup_epochs=2",
            "optim.freeze_last_layer_epochs=1",
        ],
    )
    ipe, total = 20, 120
    peak = 0.004 * np.sqrt(64 / 1024)
    lr = dict(base_value=peak, final_value=1e-6, total_iters=total, warmup_iters=2 * ipe)
    official_last = CosineScheduler(**lr)
    official_last.schedule[:ipe] = 0
    ours = build_schedules(cfg, world_size=1)
    np.testing.assert_allclose(ours.lr, CosineScheduler(**lr).schedule, rtol=1e-12)
    np.testing.assert_allclose(ours.last_layer_lr, official_last.schedule, rtol=1e-12)
