"""Packed crops: one jagged attention call over all sequences equals one call per crop size."""

from __future__ import annotations

import pytest
import torch

from cellfm.models import VisionTransformer, set_packed_attention


def _outputs(vit: VisionTransformer, glob, local, masks) -> tuple[list[torch.Tensor], dict]:
    vit.zero_grad(set_to_none=True)
    torch.manual_seed(3)  # the same stochastic-depth subsets for both modes
    a, b = vit([glob, local], [masks, None], is_training=True, pack=True)
    outs = [a["x_norm_patchtokens"], a["x_norm_clstoken"], b["x_norm_clstoken"], b["x_norm_patchtokens"]]
    (sum(o.square().sum() for o in outs)).backward()
    return [o.detach() for o in outs], {
        k: p.grad.clone() for k, p in vit.named_parameters() if p.grad is not None
    }


@pytest.mark.parametrize("drop_path", [0.0, 0.3])
def test_jagged_packed_attention_equals_one_call_per_crop_size(drop_path):
    torch.manual_seed(0)
    vit = VisionTransformer(
        embed_dim=64,
        depth=2,
        num_heads=4,
        patch_size=8,
        img_size=32,
        in_chans=1,
        drop_path_rate=drop_path,
        init_values=1.0,  # LayerScale 1: attention shapes the output (1e-5 would hide a wrong mask)
    ).train()
    # float64: the two orders of summation agree to ~1e-13, so any other difference is a bug (in fp32
    # the CLS-token gradient, a sum with cancellations, differs by ~1e-4 of its norm from rounding)
    vit = vit.double()
    glob, local = torch.randn(4, 1, 32, 32).double(), torch.randn(8, 1, 16, 16).double()
    masks = torch.zeros(4, 16, dtype=torch.bool)
    masks[:2, 3:9] = True
    ref, ref_grads = _outputs(vit, glob, local, masks)
    set_packed_attention(vit, "jagged")
    got, grads = _outputs(vit, glob, local, masks)
    for r, g in zip(ref, got):
        assert torch.allclose(g, r, rtol=0, atol=1e-10), (g - r).abs().max()
    assert grads.keys() == ref_grads.keys()
    for k, g in ref_grads.items():
        rel = ((grads[k] - g).norm() / g.norm().clamp_min(1e-30)).item()
        assert rel < 1e-10, f"{k}: relative difference {rel:.3g}"


def test_unknown_packed_attention_is_an_error():
    with pytest.raises(ValueError, match="unknown packed attention 'flash'"):
        set_packed_attention(VisionTransformer(embed_dim=64, depth=1, num_heads=4), "flash")
