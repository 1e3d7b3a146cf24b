"""cellfm's ViT against the official DINOv2 code: same weights, same outputs (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch

import cellfm

pytestmark = pytest.mark.oracle

CASES = [
    ("vit_small", (224, 224)),
    ("vit_small", (518, 518)),
    ("vit_small", (224, 308)),
    ("vit_base", (224, 224)),
    ("vit_base", (518, 518)),
    ("vit_base", (308, 224)),
]


@pytest.fixture(scope="module")
def official_models(dinov2_vits, tmp_path_factory):
    """Official hub-style backbones (518 px, LayerScale 1.0) saved as .pth state dicts."""
    out = {}
    for name in ("vit_small", "vit_base"):
        torch.manual_seed(1)
        model = getattr(dinov2_vits, name)(patch_size=14, img_size=518, init_values=1.0, block_chunks=0)
        # Non-trivial LayerScale and norms so that every parameter matters.
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim == 1:
                    p.add_(0.1 * torch.randn_like(p))
        path = tmp_path_factory.mktemp("official") / f"{name}.pth"
        torch.save(model.state_dict(), path)
        out[name] = (model.eval(), path)
    return out


@pytest.mark.parametrize("name,size", CASES)
def test_forward_features_match_official(official_models, name, size):
    official, path = official_models[name]
    ours = cellfm.load_backbone(path).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        ref = official.forward_features(x)
        got = ours.forward_features(x)
    for key in ("x_norm_clstoken", "x_norm_patchtokens", "x_prenorm"):
        diff = (ref[key] - got[key]).abs().max().item()
        assert diff <= 1e-5, f"{name} {size} {key}: max abs diff {diff}"
    assert got["x_norm_regtokens"].shape == (1, 0, official.embed_dim)


def test_masks_and_intermediate_layers_match_official(official_models):
    official, path = official_models["vit_small"]
    ours = cellfm.load_backbone(path).eval()
    x = torch.randn(2, 3, 224, 224)
    masks = torch.rand(2, 256) < 0.4
    with torch.no_grad():
        ref = official.forward_features(x, masks)
        got = ours.forward_features(x, masks)
        assert (ref["x_norm_patchtokens"] - got["x_norm_patchtokens"]).abs().max() <= 1e-5
        for n in (1, [0, 5, 11]):
            for reshape in (False, True):
                a = official.get_intermediate_layers(x, n, reshape=reshape, return_class_token=True)
                b = ours.get_intermediate_layers(x, n, reshape=reshape, return_class_token=True)
                assert len(a) == len(b)
                for (pa, ca), (pb, cb) in zip(a, b):
                    assert pa.shape == pb.shape
                    assert (pa - pb).abs().max() <= 1e-5 and (ca - cb).abs().max() <= 1e-5


@pytest.mark.parametrize("hw", [(224, 224), (518, 518), (224, 308), (700, 140)])
def test_offset_interpolation_is_bit_exact(official_models, hw):
    official, path = official_models["vit_small"]
    ours = cellfm.load_backbone(path)
    x = torch.zeros(1, 1 + (hw[0] // 14) * (hw[1] // 14), 384)
    ref = official.interpolate_pos_encoding(x, *hw)
    got = ours.interpolate_pos_encoding((hw[0] // 14, hw[1] // 14))
    assert torch.equal(ref, got)


def test_swiglu_matches_official(dinov2_vits):
    from dinov2.layers.swiglu_ffn import SwiGLUFFN

    from cellfm.models.layers import SwiGLU, swiglu_hidden_dim

    assert swiglu_hidden_dim(1536) == 4096  # giant2
    dim = 48
    hidden = swiglu_hidden_dim(dim)
    ref = SwiGLUFFN(dim, hidden)
    ours = SwiGLU(dim, hidden)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(3, 5, dim)
    assert torch.allclose(ref(x), ours(x), atol=1e-6)


def test_chunked_official_layout_loads(dinov2_vits, tmp_path):
    """`block_chunks=4` writes blocks.<chunk>.<i>.*; the converter flattens it."""
    official = dinov2_vits.vit_small(patch_size=14, img_size=224, init_values=1.0, block_chunks=4).eval()
    sd = official.state_dict()
    assert any(k.startswith("blocks.3.11.") for k in sd)
    path = tmp_path / "chunked.pth"
    torch.save(sd, path)
    ours = cellfm.load_backbone(path).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        diff = (official(x) - ours(x)).abs().max()
    assert diff <= 1e-5
