"""DINO, iBOT and KoLeo losses and teacher targets against the official dinov2 modules."""

from __future__ import annotations

import pytest
import torch

from cellfm.ssl.dino_loss import DINOLoss
from cellfm.ssl.heads import DINOHead
from cellfm.ssl.ibot_loss import iBOTPatchLoss, masks_weight
from cellfm.ssl.koleo_loss import KoLeoLoss
from cellfm.ssl.teacher_targets import sinkhorn_knopp

pytestmark = pytest.mark.oracle
K, B, NL = 32, 4, 8


@pytest.fixture(scope="module")
def official():
    from dinov2.loss import DINOLoss as OfficialDINO
    from dinov2.loss import KoLeoLoss as OfficialKoLeo
    from dinov2.loss import iBOTPatchLoss as OfficialIBOT

    return OfficialDINO, OfficialIBOT, OfficialKoLeo


def test_dino_loss_matches_official_over_steps(official):
    OfficialDINO = official[0]
    ref, ours = OfficialDINO(K), DINOLoss(K)
    n_terms = 2 + NL * 2
    for step in range(3):  # three steps exercise the lagged centre update
        teacher = torch.randn(2 * B, K) * 3
        s_global, s_local = torch.randn(2 * B, K), torch.randn(NL * B, K)
        swapped = torch.cat(teacher.chunk(2)[::-1])
        t_ref = ref.softmax_center_teacher(swapped, teacher_temp=0.05).view(2, B, K)
        ref.update_center(swapped)
        ref_local = ref(list(s_local.chunk(NL)), t_ref) / n_terms
        ref_global = ref([s_global], [t_ref.flatten(0, 1)]) * 2 / n_terms
        t_ours = ours.teacher_probs(teacher, 0.05)
        got_global, got_local = ours(s_global, s_local, t_ours)
        assert torch.allclose(got_global, ref_global, atol=1e-5), step
        assert torch.allclose(got_local, ref_local, atol=1e-5), step
    ours.centering.apply_update()
    ref.apply_center_update()
    assert torch.allclose(ours.center, ref.center, atol=1e-6)


def test_sinkhorn_matches_official_and_balances(official):
    OfficialDINO, OfficialIBOT, _ = official
    logits = torch.randn(16, K) * 0.5
    ref = OfficialDINO(K).sinkhorn_knopp_teacher(logits, 0.07)
    got = sinkhorn_knopp(logits, 0.07)
    assert torch.allclose(ref, got, atol=1e-6)
    assert torch.allclose(got.sum(-1), torch.ones(16), atol=1e-5)
    # Large logits overflow exp() in the official code; ours stays finite and balanced.
    big = torch.randn(16, K) * 10
    assert torch.isnan(OfficialDINO(K).sinkhorn_knopp_teacher(big, 0.04)).any()
    stable = sinkhorn_knopp(big, 0.04)
    assert torch.isfinite(stable).all() and torch.allclose(stable.sum(-1), torch.ones(16), atol=1e-4)


def test_ibot_sinkhorn_matches_official(official, tmp_path):
    import torch.distributed as dist

    OfficialIBOT = official[1]
    # The official iBOT Sinkhorn all-reduces unconditionally: give it a one-process group.
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        logits = torch.randn(16, K) * 0.5
        ref = OfficialIBOT(K).sinkhorn_knopp_teacher(logits, 0.07, n_masked_patches_tensor=torch.tensor(16))
        assert torch.allclose(ref, sinkhorn_knopp(logits, 0.07, n_samples=16), atol=1e-6)
    finally:
        dist.destroy_process_group()


def test_ibot_loss_matches_official(official):
    OfficialIBOT = official[1]
    ref, ours = OfficialIBOT(K), iBOTPatchLoss(K)
    masks = torch.rand(2 * B, 16) < 0.3
    masks[0] = False  # an unmasked image contributes nothing
    m = int(masks.sum())
    student, teacher = torch.randn(m, K), torch.randn(m, K)
    t_ref = ref.softmax_center_teacher(teacher.unsqueeze(0), teacher_temp=0.06).squeeze(0)
    t_ours = ours.teacher_probs(teacher, 0.06)
    assert torch.allclose(t_ref, t_ours, atol=1e-6)
    weight = masks_weight(masks)
    expected = ref.forward_masked(
        student, t_ref, student_masks_flat=masks, n_masked_patches=m, masks_weight=weight
    )
    assert torch.allclose(ours(student, t_ours, masks), expected, atol=1e-6)
    ref.update_center(teacher.unsqueeze(0))
    ref.apply_center_update()
    ours.centering.apply_update()
    assert torch.allclose(ours.center, ref.center, atol=1e-6)


def test_koleo_matches_official_and_guards_batch_of_one(official):
    OfficialKoLeo = official[2]
    x = torch.randn(12, 24)
    assert torch.allclose(KoLeoLoss()(x), OfficialKoLeo()(x), atol=1e-6)
    single = KoLeoLoss()(torch.randn(1, 24))
    assert torch.isfinite(single) and single == 0
    # Spreading the points lowers the loss.
    tight = torch.randn(1, 24) + 0.01 * torch.randn(12, 24)
    assert KoLeoLoss()(tight) > KoLeoLoss()(x)


def test_dino_head_matches_official_and_loads_its_keys(official):
    from dinov2.layers import DINOHead as OfficialHead

    ref = OfficialHead(64, 128, hidden_dim=96, bottleneck_dim=32)
    ours = DINOHead(64, 128, hidden_dim=96, bottleneck_dim=32)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(5, 64)
    assert torch.allclose(ref(x), ours(x), atol=1e-6)
    assert torch.allclose(ours.last_layer.weight_g, torch.ones(128, 1))
