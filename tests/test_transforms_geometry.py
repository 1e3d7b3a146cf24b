"""Geometry: crop boxes, antialiased resize, flips, dihedral group, elastic warp."""

import math

import torch
import torch.nn.functional as F
from cellfm.transforms import (
    RandomResizedCrop,
    elastic_warp,
    random_dihedral,
    random_flip,
    resized_crop,
    sample_crop_box,
)


def test_crop_box_respects_scale_ratio_and_bounds():
    g = torch.Generator().manual_seed(0)
    h, w = 300, 400
    for _ in range(300):
        top, left, bh, bw = sample_crop_box(h, w, (0.1, 0.5), (3 / 4, 4 / 3), g)
        assert 0 <= top and top + bh <= h and 0 <= left and left + bw <= w
        area = bh * bw / (h * w)
        assert 0.09 <= area <= 0.51
        assert 3 / 4 - 0.05 <= bw / bh <= 4 / 3 + 0.05


def test_crop_box_fallback_is_centred_full_crop():
    # scale 1.0 with a narrow ratio cannot fit a 10 x 100 image: fallback clamps the aspect
    top, left, bh, bw = sample_crop_box(10, 100, (1.0, 1.0), (1.0, 1.0), torch.Generator().manual_seed(0))
    assert (bh, bw) == (10, 10) and top == 0 and left == 45


def test_antialias_when_shrinking_suppresses_aliasing():
    # a checkerboard at the Nyquist rate must average to grey when shrunk ~4x
    yy, xx = torch.meshgrid(torch.arange(128), torch.arange(128), indexing="ij")
    board = ((yy + xx) % 2).float()[None]
    for mode in ("bilinear", "bicubic"):
        aa = resized_crop(board, (0, 0, 128, 128), 30, mode, antialias=True)
        no_aa = resized_crop(board, (0, 0, 128, 128), 30, mode, antialias=False)
        assert float((aa - 0.5).abs().max()) < 0.01
        assert float((no_aa - 0.5).abs().max()) > 0.3  # aliased without the filter


def test_resized_crop_matches_interpolate_and_keeps_dtype_contract():
    x = torch.randint(0, 255, (3, 50, 60), dtype=torch.uint8)
    out = resized_crop(x, (5, 7, 40, 40), 20, "bicubic", True)
    ref = F.interpolate(x[None, :, 5:45, 7:47].float(), size=(20, 20), mode="bicubic", antialias=True)[0]
    assert out.dtype == torch.float32 and torch.allclose(out, ref)
    same = resized_crop(x.float(), (0, 0, 20, 20), 20)
    assert torch.equal(same, x[:, :20, :20].float()) and same.data_ptr() != x.data_ptr()


def test_random_resized_crop_class():
    out = RandomResizedCrop(24, scale=(0.2, 1.0))(torch.rand(2, 64, 64), torch.Generator().manual_seed(1))
    assert out.shape == (2, 24, 24)


def test_dihedral_covers_all_eight_symmetries_uniformly():
    x = torch.arange(9.0).reshape(1, 1, 3, 3).repeat(4000, 1, 1, 1)
    out = random_dihedral(x, torch.Generator().manual_seed(0))
    keys = {}
    for t in out:
        keys[tuple(t.flatten().tolist())] = keys.get(tuple(t.flatten().tolist()), 0) + 1
    assert len(keys) == 8
    assert all(abs(c / 4000 - 1 / 8) < 0.03 for c in keys.values())


def test_dihedral_non_square_keeps_shape():
    x = torch.rand(16, 2, 3, 5)
    out = random_dihedral(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape


def test_flip_probabilities():
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).reshape(1, 1, 2, 2).repeat(4000, 1, 1, 1)
    out = random_flip(x, torch.Generator().manual_seed(0), p_horizontal=0.3, p_vertical=0.0)
    hflipped = (out[:, 0, 0, 0] == 1.0).float().mean()
    assert abs(float(hflipped) - 0.3) < 0.03
    assert bool((out[:, 0, 0, :].sum(-1) == 1.0).all())  # never flipped vertically


def test_elastic_identity_at_zero_and_smooth_otherwise():
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(elastic_warp(x, None, alpha=0.0), x)
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).repeat(1, 1, 64, 1)
    warped = elastic_warp(ramp, torch.Generator().manual_seed(0), alpha=3.0, grid=4)
    diff = (warped - ramp).abs()
    assert 0 < float(diff.mean()) < 0.1  # moved, but a few pixels at most
    assert math.isclose(float(warped.mean()), float(ramp.mean()), abs_tol=0.05)
    skipped = elastic_warp(x, torch.Generator().manual_seed(0), alpha=3.0, p=0.0)
    assert torch.equal(skipped, x)
