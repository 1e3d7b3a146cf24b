"""Shipped recipes resolve and validate; channel strategies, official starts and bf16 train a step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cellfm
from cellfm.config import list_configs
from cellfm.data.writer import create_plate, write_image
from cellfm.models import BagOfChannels
from cellfm.ssl.config import load_ssl_config
from cellfm.ssl.train import Trainer

from .test_ssl_train import TINY


@pytest.mark.parametrize(
    "name", [n for n in list_configs() if n.startswith(("train/", "distill/")) or n == "cpu_tiny"]
)
def test_shipped_recipes_resolve(name):
    extra = ["distillation.teacher_checkpoint=RUN"] if name.startswith("distill/") else []
    cfg = load_ssl_config(name, extra)
    assert cfg.augment.masking.patch_size == cfg.model.patch_size
    assert cfg.augment.crops.local_crops_size % cfg.model.patch_size == 0


def test_large_recipes_follow_the_paper():
    cfg = load_ssl_config("train/vitl14")
    assert cfg.dino.head.n_prototypes == 131072 and cfg.dino.head.bottleneck_dim == 384
    assert cfg.ibot.separate_head and cfg.teacher.momentum_teacher == 0.994
    assert cfg.optim.weight_decay_end == 0.2 and cfg.model.drop_path_rate == 0.4
    cp = load_ssl_config("train/cellpainting5")
    assert cp.model.in_chans == 5 and cp.augment.channels.names == ["DNA", "ER", "RNA", "AGP", "Mito"]


@pytest.fixture(scope="module")
def two_channel_plate(tmp_path_factory):
    from skimage import data, filters

    cell = data.cell().astype(np.float32)
    img = np.stack([cell, filters.gaussian(cell, 3) * 255]).astype(np.uint16)
    out = tmp_path_factory.mktemp("p2") / "two.ome.zarr"
    root = create_plate(str(out), "two", {"A/1": ["0"]}, "0.4")
    write_image(root["A/1"].require_group("0"), img, ["DNA", "Actin"], "0.4", chunk=128, min_level_size=128)
    return str(out)


def test_bag_of_channels_trains_on_single_channel_crops_and_exports_the_wrapper(two_channel_plate, tmp_path):
    cfg = load_ssl_config(
        "cpu_tiny",
        TINY + ["model.channel_strategy=bag_of_channels", "augment.channels={bag_of_channels: true}"],
    )
    trainer = Trainer(cfg, [two_channel_plate], tmp_path / "boc")
    batch = next(trainer.data.from_step(0))
    assert batch["collated_global_crops"].shape[1] == 1
    row = trainer.train_step(batch)
    assert np.isfinite(row["loss"])
    student_before = {k: v.clone() for k, v in trainer.meta.student["backbone"].state_dict().items()}
    trainer.save()
    # The export carries the teacher's weights and leaves the student's alone.
    for key, value in trainer.meta.student["backbone"].state_dict().items():
        assert torch.equal(value, student_before[key]), key
    model = cellfm.load_backbone(tmp_path / "boc" / "backbone.safetensors")
    assert isinstance(model, BagOfChannels)
    teacher = trainer.meta.teacher["backbone"].state_dict()
    assert any(not torch.equal(teacher[k], student_before[k]) for k in teacher)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, teacher[key]), key
    assert model(torch.randn(1, 2, 32, 32)).shape == (1, 2 * 192)


def test_continue_from_an_official_rgb_checkpoint(two_channel_plate, tmp_path, dinov2_vits):
    official = dinov2_vits.DinoVisionTransformer(
        img_size=32, patch_size=8, embed_dim=192, depth=2, num_heads=3, init_values=1.0, block_chunks=0
    )
    path = tmp_path / "official.pth"
    torch.save(official.state_dict(), path)
    cfg = load_ssl_config(
        "cpu_tiny", TINY + [f"model.pretrained={path}", "model.in_chans=2", "augment.channels.num_channels=2"]
    )
    trainer = Trainer(cfg, [two_channel_plate], tmp_path / "cont")
    student = trainer.meta.student["backbone"]
    assert student.patch_embed.proj.weight.shape[1] == 2
    assert torch.equal(student.blocks[1].mlp.fc1.weight, official.blocks[1].mlp.fc1.weight)
    # Fresh heads, teacher starts as a copy of the student.
    assert torch.equal(trainer.meta.teacher["backbone"].pos_embed, official.pos_embed)
    assert np.isfinite(trainer.train_step(next(trainer.data.from_step(0)))["loss"])


def test_bf16_autocast_step_is_finite(two_channel_plate, tmp_path):
    cfg = load_ssl_config(
        "cpu_tiny", TINY + ["train.precision=bf16", "model.in_chans=2", "augment.channels.num_channels=2"]
    )
    trainer = Trainer(cfg, [two_channel_plate], tmp_path / "bf16")
    row = trainer.train_step(next(trainer.data.from_step(0)))
    assert np.isfinite(row["loss"]) and row["loss"] > 0


@pytest.mark.parametrize("name", ["vitg14_to_vitl14", "vitg14_to_vitb14", "vitl14_to_vits14"])
def test_distillation_recipes_follow_the_paper(name):
    cfg = load_ssl_config(f"distill/{name}", ["distillation.teacher_checkpoint=RUN"])
    assert cfg.distillation.enabled and not cfg.distillation.masking
    assert cfg.train.precision == "bf16" and cfg.train.distributed == "fsdp"
    assert cfg.model.drop_path_rate == 0.0
    for gpu in ("train/vits14", "train/vitb14", "train/vitl14", "train/vitg14", "train/cellpainting5"):
        assert load_ssl_config(gpu).train.precision == "bf16", gpu


def test_distillation_scores_ibot_on_every_global_patch_without_masking():
    """Without masking the student sees its global crops unmasked (the mask token gets no
    gradient) and iBOT scores every patch token, even where the collator masked none."""
    import copy

    from cellfm.models.config import backbone_from_config
    from cellfm.ssl.meta_arch import SSLMetaArch

    cfg = load_ssl_config(
        "cpu_tiny", TINY + ["distillation.enabled=true", "distillation.teacher_checkpoint=RUN"]
    )
    torch.manual_seed(0)
    student = SSLMetaArch(load_ssl_config("cpu_tiny", TINY), backbone_from_config(cfg.model)).student
    meta = SSLMetaArch(cfg, backbone_from_config(cfg.model), copy.deepcopy(student))
    assert meta.mask_token_unused
    b, n_tok = 2, (32 // 8) ** 2
    batch = {
        "collated_global_crops": torch.randn(2 * b, 1, 32, 32),
        "collated_local_crops": torch.randn(2 * b, 1, 16, 16),
        "collated_masks": torch.zeros(2 * b, n_tok, dtype=torch.bool),
    }
    logs = meta.forward_backward(batch, 0.04)
    assert logs["ibot_loss"] > 0
    assert meta.student["backbone"].mask_token.grad is None
