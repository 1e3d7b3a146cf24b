"""The CLS dihedral-invariance term: its target is invariant by construction, and training on it
makes the student's CLS of a rotated or mirrored crop move towards the unrotated crop's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from cellfm.transforms import MaskCollator, dihedral_views

from cellfm.models.config import backbone_from_config
from cellfm.ssl.config import load_ssl_config
from cellfm.ssl.invariance_loss import DihedralInvarianceLoss, dihedral_mean_cls
from cellfm.ssl.meta_arch import SSLMetaArch

TINY = ["model.depth=2", "model.drop_path_rate=0.0", "dino.head.n_prototypes=64"]


def _cls(backbone, x):
    return backbone(x, is_training=True)["x_norm_clstoken"]


def test_teacher_target_is_the_same_for_every_symmetry_of_the_crop():
    cfg = load_ssl_config("cpu_tiny", TINY)
    torch.manual_seed(0)
    backbone = backbone_from_config(cfg.model).eval()
    size = cfg.augment.crops.global_crops_size
    x = torch.randn(3, cfg.model.in_chans, size, size)
    with torch.no_grad():
        ref = dihedral_mean_cls(backbone, x, _cls(backbone, x))
        for v in dihedral_views(x)[1:]:  # rotations and the mirrored rotations
            torch.testing.assert_close(
                dihedral_mean_cls(backbone, v, _cls(backbone, v)), ref, atol=2e-5, rtol=0
            )
        # ... while the plain CLS of a rotated crop is not the same (the term has something to do)
        assert F.cosine_similarity(_cls(backbone, x), _cls(backbone, x.rot90(1, (-2, -1)))).min() < 0.999
    assert torch.allclose(ref.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_invariance_loss_names_mismatched_shapes():
    with pytest.raises(ValueError, match="student CLS"):
        DihedralInvarianceLoss()(torch.zeros(2, 8), torch.zeros(3, 8))


def _batch(cfg, n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    size, c = cfg.augment.crops.global_crops_size, cfg.model.in_chans
    # Smooth random images (a blurred field has structure a rotation changes)
    imgs = F.avg_pool2d(torch.randn(n, c, size + 6, size + 6, generator=gen), 7, stride=1)
    samples = [{"global_crops": [im, im.flip(-1)], "local_crops": []} for im in imgs]
    return imgs, MaskCollator(global_crops_size=size, patch_size=cfg.model.patch_size, seed=seed)(samples)


def _rotation_gap(backbone, imgs) -> float:
    """Cosine distance of each image's CLS to its rotated copy's, over the mean distance between
    different images' CLS (so a collapsed, constant CLS does not count as invariant)."""
    with torch.no_grad():
        a, b = _cls(backbone, imgs), _cls(backbone, imgs.rot90(1, (-2, -1)))
        same = (1 - F.cosine_similarity(a, b)).mean()
        a = F.normalize(a, dim=-1)
        off = ~torch.eye(len(a), dtype=torch.bool)
        between = (1 - a @ a.t())[off].mean()
        return float(same / between)


def test_training_on_the_term_makes_the_cls_rotation_invariant():
    cfg = load_ssl_config(
        "cpu_tiny", TINY + ["dino.loss_weight=0", "ibot.loss_weight=0", "dino.cls_invariance_weight=1"]
    )
    torch.manual_seed(0)
    meta = SSLMetaArch(cfg, backbone_from_config(cfg.model))
    meta.train()
    opt = torch.optim.AdamW(meta.student.parameters(), lr=1e-3)
    held_out, _ = _batch(cfg, 8, seed=99)
    before = _rotation_gap(meta.student["backbone"], held_out)
    for step in range(15):
        _, batch = _batch(cfg, 8, seed=step)
        opt.zero_grad()
        logs = meta.forward_backward(batch, 0.04)
        opt.step()
        meta.update_teacher(0.5)
    assert logs["cls_invariance_loss"] > 0
    after = _rotation_gap(meta.student["backbone"], held_out)
    assert after < 0.5 * before, (before, after)


def test_the_term_is_off_by_default_and_then_not_logged():
    cfg = load_ssl_config("cpu_tiny", TINY)
    assert cfg.dino.cls_invariance_weight == 0
    torch.manual_seed(0)
    meta = SSLMetaArch(cfg, backbone_from_config(cfg.model))
    _, batch = _batch(cfg, 2, seed=0)
    assert "cls_invariance_loss" not in meta.forward_backward(batch, 0.04)


def test_negative_weight_is_refused():
    with pytest.raises(ValueError, match="cls_invariance_weight"):
        load_ssl_config("cpu_tiny", ["dino.cls_invariance_weight=-1"])
