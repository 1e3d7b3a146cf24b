"""Int8 CPU inference: close to the float32 model on real images, wired into `cellfm embed`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cellfm.transforms import Normalize
from torch import nn

import cellfm
from cellfm.models import BagOfChannels, VisionTransformer, ViTArch
from cellfm.models.int8 import Int8Linear, quantize_int8


def test_int8_linear_is_close_to_float_and_keeps_shapes():
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    q = Int8Linear(lin)
    x = torch.randn(3, 5, 64) * torch.linspace(0.01, 10, 5)[None, :, None]  # rows of very different scale
    ref, got = lin(x), q(x)
    assert got.shape == ref.shape == (3, 5, 48)
    rel = (got - ref).norm(dim=-1) / ref.norm(dim=-1)
    assert rel.max() < 0.02, rel  # per-row scales: small rows keep their precision
    assert q.weight_t.dtype == torch.int8
    # not a float pass-through: the int8 rounding is visible
    assert not torch.allclose(got, ref, atol=1e-6)


def test_quantised_default_model_matches_float_on_real_nuclei():
    from cellfm.data.samples import heldout_nuclei

    model = cellfm.load_backbone().eval()
    q = quantize_int8(model)
    assert any(isinstance(m, Int8Linear) for m in q.modules())
    assert not any(isinstance(m, Int8Linear) for m in model.modules()), "the original must stay float"
    stack, _ = heldout_nuclei()
    x = torch.stack(
        [Normalize("percentile")(torch.from_numpy(stack[z].astype(np.float32))[None]) for z in (10, 30)]
    )
    x = Normalize("zscore", eps=0.01)(x)
    with torch.inference_mode():
        ref, got = model.forward_features(x), q.forward_features(x)
    cos = nn.functional.cosine_similarity
    assert cos(ref["x_norm_clstoken"], got["x_norm_clstoken"]).min() > 0.995
    assert cos(ref["x_norm_patchtokens"], got["x_norm_patchtokens"], dim=-1).mean() > 0.995


def test_quantise_finds_blocks_inside_bag_of_channels_and_rejects_others():
    vit = VisionTransformer(
        ViTArch(embed_dim=32, depth=1, num_heads=2, patch_size=8, img_size=32, in_chans=1)
    )
    q = quantize_int8(BagOfChannels(vit))
    assert sum(isinstance(m, Int8Linear) for m in q.modules()) == 4  # qkv, proj, fc1, fc2
    with pytest.raises(ValueError, match="no transformer blocks"):
        quantize_int8(nn.Linear(2, 2))


def test_embed_int8_rows_match_float_and_are_recorded(tmp_path):
    from cellfm.embed import embed
    from tests.test_embed_api import make_plate, save_tiny

    store = make_plate(tmp_path / "P.ome.zarr")
    model = save_tiny(tmp_path / "m.safetensors")
    fp32 = embed(store, model)
    int8 = embed(store, model, int8=True)
    assert list(int8.obs_names) == list(fp32.obs_names)
    cos = (int8.X * fp32.X).sum(1) / np.linalg.norm(int8.X, axis=1) / np.linalg.norm(fp32.X, axis=1)
    assert cos.min() > 0.99 and not np.array_equal(int8.X, fp32.X)  # int8 really ran
    assert bool(int8.uns["cellfm"]["int8"]) and not bool(fp32.uns["cellfm"]["int8"])
    with pytest.raises(ValueError, match="int8 runs on the CPU"):
        embed(store, model, int8=True, device="cuda")
