"""The blockwise prototype cross-entropy equals the plain losses, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from cellfm.transforms import MaskCollator

from cellfm.models.config import backbone_from_config
from cellfm.ssl.config import load_ssl_config
from cellfm.ssl.meta_arch import SSLMetaArch
from cellfm.ssl.prototype_loss import SoftTargets, prototype_cross_entropy


def _naive(x, w, segments):
    out, start = [], 0
    for s in segments:
        lsm = F.log_softmax(x[start : start + s.rows] @ w.t() / s.temp, dim=-1)
        t = s.probs if s.index is None else s.probs[s.index]
        out.append((-(t * lsm).sum(-1) * s.row_weight).sum())
        start += s.rows
    return out


@pytest.mark.parametrize("block_rows", [1, 3, 1000])
def test_matches_log_softmax_reference_in_float64(block_rows):
    g = torch.Generator().manual_seed(0)
    n, d, k = 23, 8, 50
    x = torch.randn(n, d, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(k, d, dtype=torch.float64, generator=g, requires_grad=True)
    probs = torch.softmax(torch.randn(9, k, dtype=torch.float64, generator=g), -1)
    segments = [
        SoftTargets(probs[:5] * 2, torch.rand(5, dtype=torch.float64, generator=g), scale=0.7, temp=0.1),
        SoftTargets(probs, torch.zeros(0, dtype=torch.float64), index=torch.zeros(0, dtype=torch.long)),
        SoftTargets(
            probs,
            torch.rand(18, dtype=torch.float64, generator=g),
            index=torch.randint(0, 9, (18,), generator=g),
            scale=1.3,
            temp=0.05,
        ),
    ]
    total, values = prototype_cross_entropy(x, w, segments, block_rows=block_rows)
    (2.5 * total).backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    ref = _naive(x, w, segments)
    (2.5 * sum(s.scale * r for s, r in zip(segments, ref))).backward()
    torch.testing.assert_close(values, torch.stack(ref).detach(), rtol=1e-12, atol=1e-12)
    assert not values.requires_grad and total.requires_grad
    torch.testing.assert_close(gx, x.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw, w.grad, rtol=1e-10, atol=1e-12)


def test_large_logits_stay_finite():
    """Logits / temp far beyond exp's range (~88) must not overflow."""
    x = torch.tensor([[30.0, 0.0], [0.0, -30.0]], requires_grad=True)
    w = torch.eye(2)
    t = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    total, _ = prototype_cross_entropy(x, w, [SoftTargets(t, torch.ones(2), temp=0.01)])
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(x.grad).all()
    torch.testing.assert_close(total, torch.tensor(3000.0))  # row 0: 3000 - 0; row 1: ~0


def test_errors_name_the_mismatch():
    x, w = torch.randn(4, 3), torch.randn(10, 3)
    with pytest.raises(ValueError, match="cover 3 rows but the head got 4"):
        prototype_cross_entropy(x, w, [SoftTargets(torch.rand(3, 10), torch.ones(3))])
    with pytest.raises(ValueError, match="targets have 7 prototypes, the head has 10"):
        prototype_cross_entropy(x, w, [SoftTargets(torch.rand(4, 7), torch.ones(4))])


def _step(fused: bool, separate_ibot: bool, n_local: int):
    cfg = load_ssl_config(
        "cpu_tiny",
        [
            "model.depth=2",
            "model.drop_path_rate=0.0",
            f"train.fused_head_loss={str(fused).lower()}",
            f"ibot.separate_head={str(separate_ibot).lower()}",
            "dino.head.n_prototypes=300",
            "ibot.head.n_prototypes=200",
            "dino.loss_weight=0.7",
            "ibot.loss_weight=1.3",
        ],
    )
    torch.manual_seed(0)
    meta = SSLMetaArch(cfg, backbone_from_config(cfg.model))
    gen = torch.Generator().manual_seed(1)
    size, local = cfg.augment.crops.global_crops_size, cfg.augment.crops.local_crops_size
    chans = cfg.model.in_chans
    samples = [
        {
            "global_crops": [torch.randn(chans, size, size, generator=gen) for _ in range(2)],
            "local_crops": [torch.randn(chans, local, local, generator=gen) for _ in range(n_local)],
        }
        for _ in range(3)
    ]
    batch = MaskCollator(global_crops_size=size, patch_size=cfg.model.patch_size, seed=0)(samples)
    meta.train()
    meta.forward_backward(batch, 0.04)  # a first step so the centre is not zero
    meta.student.zero_grad()
    logs = meta.forward_backward(batch, 0.04)
    grads = {k: p.grad.clone() for k, p in meta.student.named_parameters() if p.grad is not None}
    return logs, grads


@pytest.mark.parametrize("separate_ibot,n_local", [(False, 2), (True, 2), (False, 0)])
def test_fused_step_equals_plain_losses(separate_ibot, n_local):
    fused_logs, fused_grads = _step(True, separate_ibot, n_local)
    plain_logs, plain_grads = _step(False, separate_ibot, n_local)
    for key in ("loss", "dino_global_loss", "dino_local_loss", "ibot_loss", "koleo_loss"):
        torch.testing.assert_close(fused_logs[key], plain_logs[key], rtol=1e-5, atol=1e-6, msg=key)
    assert fused_logs["ibot_loss"] > 0 and (n_local == 0) == (fused_logs["dino_local_loss"] == 0)
    assert fused_grads.keys() == plain_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(fused_grads[name], plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_inplace_centred_softmax_equals_plain_and_queues_the_raw_mean():
    from cellfm.ssl.dino_loss import DINOLoss

    logits = torch.randn(70, 4096) * 5
    plain, inplace = DINOLoss(4096), DINOLoss(4096)
    for loss in (plain, inplace):
        loss.centering.center.normal_(generator=torch.Generator().manual_seed(3))
    expected = plain.teacher_probs(logits, 0.04)
    got = inplace.teacher_probs(logits.clone(), 0.04, inplace=True)
    torch.testing.assert_close(got, expected)
    plain.centering.apply_update()
    inplace.centering.apply_update()
    torch.testing.assert_close(inplace.center, plain.center)
