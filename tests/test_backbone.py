"""Backbone behaviour beyond parity: registers, padding, stochastic depth, attention backends."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from cellfm.models import VisionTransformer, ViTArch, set_attention_backend, vit_arch
from cellfm.models.layers import Attention, Block, drop_path, subset_residual
from cellfm.models.pos_embed import interpolate_pos_embed

TINY = dict(embed_dim=64, depth=2, num_heads=2, patch_size=8, img_size=64, in_chans=3)


def tiny(**kw) -> VisionTransformer:
    return VisionTransformer(ViTArch(**{**TINY, **kw})).eval()


def test_output_contract_and_token_order_with_registers():
    model = tiny(num_register_tokens=4, interpolate_offset=0.0, interpolate_antialias=True)
    sd = model.state_dict()
    assert sd["register_tokens"].shape == (1, 4, 64)
    assert sd["pos_embed"].shape == (1, 1 + 64, 64)
    x = torch.randn(2, 3, 64, 96)
    tokens = model.prepare_tokens_with_masks(x)
    assert tokens.shape == (2, 1 + 4 + 8 * 12, 64)
    # Registers sit right after CLS and carry no positional embedding.
    assert torch.equal(tokens[:, 1:5], model.register_tokens.expand(2, -1, -1))
    out = model.forward_features(x)
    assert out["x_norm_clstoken"].shape == (2, 64)
    assert out["x_norm_regtokens"].shape == (2, 4, 64)
    assert out["x_norm_patchtokens"].shape == (2, 96, 64)
    assert out["x_prenorm"].shape == (2, 101, 64)
    assert torch.allclose(model.norm(out["x_prenorm"])[:, 5:], out["x_norm_patchtokens"])
    maps = model.get_intermediate_layers(x, 2, reshape=True)
    assert len(maps) == 2 and maps[0].shape == (2, 64, 8, 12)


def test_register_models_use_size_based_antialiased_interpolation():
    model = tiny(num_register_tokens=4, interpolate_offset=0.0, interpolate_antialias=True)
    pos = model.pos_embed
    grid = pos[:, 1:].reshape(1, 8, 8, 64).permute(0, 3, 1, 2)
    for hw in [(4, 4), (5, 12), (16, 16)]:
        expected = F.interpolate(grid, size=hw, mode="bicubic", antialias=True)
        expected = torch.cat([pos[:, :1], expected.permute(0, 2, 3, 1).reshape(1, -1, 64)], 1)
        assert torch.equal(model.interpolate_pos_encoding(hw), expected)
    # The same grid through the offset path differs: the variants are not interchangeable.
    offset = interpolate_pos_embed(pos, (5, 12), offset=0.1, antialias=False)
    assert not torch.allclose(offset, model.interpolate_pos_encoding((5, 12)))
    assert model.interpolate_pos_encoding((8, 8)) is model.pos_embed


def test_size_not_multiple_of_patch_is_a_clear_error_unless_padding():
    with pytest.raises(ValueError, match=r"70x64 is not a multiple of the patch size 8.*pad_mode"):
        tiny().forward_features(torch.randn(1, 3, 70, 64))
    padded = VisionTransformer(ViTArch(**TINY), pad_mode="reflect").eval()
    out = padded.forward_features(torch.randn(1, 3, 70, 64))
    assert out["x_norm_patchtokens"].shape == (1, 9 * 8, 64)
    assert padded.get_intermediate_layers(torch.randn(1, 3, 70, 64), reshape=True)[0].shape == (1, 64, 9, 8)


def test_wrong_channel_count_names_shapes():
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, H, W\), got \(1, 5, 64, 64\)"):
        tiny().forward_features(torch.randn(1, 5, 64, 64))


def test_mask_token_replaces_masked_patches():
    model = tiny()
    with torch.no_grad():
        model.mask_token.fill_(3.0)
    x = torch.randn(1, 3, 64, 64)
    masks = torch.zeros(1, 64, dtype=torch.bool)
    masks[0, 5] = True
    tokens = model.prepare_tokens_with_masks(x, masks)
    pos = model.pos_embed[:, 1:]
    assert torch.allclose(tokens[0, 1 + 5], 3.0 + pos[0, 5])
    assert not torch.allclose(tokens[0, 1 + 4], 3.0 + pos[0, 4])


def test_factories_cover_the_family():
    assert vit_arch("giant2").ffn == "swiglu" and vit_arch("giant2").embed_dim == 1536
    assert vit_arch("large", 16).depth == 24
    reg = vit_arch("small", 14, num_register_tokens=4)
    assert reg.interpolate_offset == 0.0 and reg.interpolate_antialias
    with pytest.raises(ValueError, match="patch_size must be one of"):
        vit_arch("small", 12)
    with pytest.raises(ValueError, match="unknown ViT size"):
        vit_arch("huge")
    for p in (8, 14, 16):
        m = VisionTransformer(vit_arch("small", p, depth=1, img_size=p * 4))
        assert m.forward_features(torch.randn(1, 3, p * 3, p * 5))["x_norm_patchtokens"].shape == (1, 15, 384)


def test_subset_stochastic_depth_is_unbiased_and_skips_dropped_samples():
    x = torch.randn(10, 3, 4)
    calls = []

    def branch(t):
        calls.append(t.shape[0])
        return 2.0 * t

    g = torch.Generator().manual_seed(0)
    outs = torch.stack([subset_residual(x, branch, 0.4, generator=g) for _ in range(4000)])
    assert set(calls) == {6}  # only int(10 * 0.6) samples computed each time
    # Each sample's residual is either absent or scaled by 10 / 6, and is 1 on average.
    resid = (outs - x) / (2.0 * x)
    assert (resid.mean(0) - 1.0).abs().max() < 0.06
    assert torch.all((resid.abs() < 1e-4) | ((resid - 10 / 6).abs() < 1e-4))


def test_drop_path_expectation_and_eval_identity():
    r = torch.ones(20000, 2)
    out = drop_path(r, 0.3, training=True)
    assert abs(out.mean().item() - 1.0) < 0.03
    assert abs((out == 0).float().mean().item() - 0.3) < 0.02
    assert torch.equal(drop_path(r, 0.3, training=False), r)


def test_block_drop_path_uses_both_branches_and_matches_expectation():
    """DINOv2 applied drop_path1 to the FFN branch too (its FIXME); each branch has its own here."""
    torch.manual_seed(0)
    block = Block(16, 2, init_values=1.0, drop_path_rate=0.05)
    x = torch.randn(8, 5, 16)
    block.eval()
    ref = block(x)
    block.train()
    mean = torch.stack([block(x) for _ in range(3000)]).mean(0)
    # Not exact (the FFN sees the post-attention input) but close for a small rate.
    assert (mean - ref).abs().mean() < 0.05
    block.drop_path_rate = 0.5  # subset path: every output row is finite and shaped
    assert block(x).shape == x.shape


def _reference_memory_efficient_attention(q, k, v):
    """Stand-in for xformers.ops.memory_efficient_attention: (B, N, H, K) layout, explicit math."""
    scale = q.shape[-1] ** -0.5
    attn = torch.einsum("bnhk,bmhk->bhnm", q * scale, k).softmax(-1)
    return torch.einsum("bhnm,bmhk->bnhk", attn, v)


def test_xformers_backend_layout_matches_sdpa(monkeypatch):
    fake_ops = types.SimpleNamespace(memory_efficient_attention=_reference_memory_efficient_attention)
    attn = Attention(32, 4)
    x = torch.randn(2, 7, 32)
    ref = attn(x)
    attn.set_backend("xformers", ops=fake_ops)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    got = attn(x)
    assert torch.allclose(ref, got, atol=1e-5)


def test_xformers_backend_needs_xformers(monkeypatch):
    import cellfm.models.layers.attention as attention

    monkeypatch.setattr(attention, "load_xformers_ops", lambda: None)
    with pytest.raises(RuntimeError, match="xformers is not installed"):
        set_attention_backend(tiny(), "xformers")
    with pytest.raises(ValueError, match="unknown attention backend"):
        set_attention_backend(tiny(), "flash")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_xformers_equals_sdpa_on_cuda():
    pytest.importorskip("xformers.ops")
    model = tiny().cuda()
    x = torch.randn(2, 3, 64, 64, device="cuda")
    with torch.no_grad():
        ref = model.forward_features(x)["x_norm_patchtokens"]
        set_attention_backend(model, "xformers")
        got = model.forward_features(x)["x_norm_patchtokens"]
    assert torch.allclose(ref, got, atol=1e-4)
