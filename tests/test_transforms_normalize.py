"""Normalisation modes: percentile, z-score, dataset statistics, dtype range, identity."""

import numpy as np
import pytest
import torch
from cellfm.transforms import Normalize


def test_percentile_matches_numpy_and_maps_to_unit_range():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4000, (3, 40, 50), generator=g, dtype=torch.int32).to(torch.uint16)
    out = Normalize("percentile", low=1.0, high=99.8, max_samples=None)(x)
    ref = x.to(torch.int32).numpy().reshape(3, -1).astype(np.float64)
    lo, hi = np.percentile(ref, 1.0, axis=1), np.percentile(ref, 99.8, axis=1)
    expect = (ref - lo[:, None]) / (hi - lo)[:, None]
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.reshape(3, -1).numpy(), expect, rtol=1e-4, atol=1e-4)


def test_percentile_subsampling_is_close_to_exact():
    x = torch.rand(2, 300, 300) * 1000
    exact = Normalize("percentile", max_samples=None).stats(x[None])
    sub = Normalize("percentile", max_samples=10000).stats(x[None])
    torch.testing.assert_close(sub[0], exact[0], rtol=0.05, atol=2.0)
    torch.testing.assert_close(sub[1], exact[1], rtol=0.02, atol=2.0)


def test_percentile_clip():
    x = torch.linspace(0, 1, 1000).reshape(1, 10, 100)
    out = Normalize("percentile", low=10, high=90, clip=True)(x)
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0


def test_zscore_per_channel_per_image():
    x = torch.randn(4, 3, 32, 32) * torch.tensor([1.0, 10.0, 100.0]).view(1, 3, 1, 1) + 7
    out = Normalize("zscore")(x)
    torch.testing.assert_close(out.mean(dim=(-2, -1)), torch.zeros(4, 3), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(dim=(-2, -1), correction=0), torch.ones(4, 3), atol=1e-4, rtol=0)


def test_dataset_stats_and_channel_count_error():
    x = torch.full((2, 8, 8), 5.0)
    out = Normalize("dataset", mean=[1.0, 3.0], std=[2.0, 4.0])(x)
    assert torch.allclose(out[0], torch.full((8, 8), 2.0)) and torch.allclose(out[1], torch.full((8, 8), 0.5))
    with pytest.raises(ValueError, match="2 channel statistics but the image has 3 channels"):
        Normalize("dataset", mean=[1.0, 3.0], std=[2.0, 4.0])(torch.zeros(3, 8, 8))
    # Bag-of-Channels: single-channel planes keep their channel identity
    n = Normalize("dataset", mean=[1.0, 3.0], std=[2.0, 4.0])
    off, sc = n.stats(torch.zeros(2, 1, 4, 4), channel_index=torch.tensor([[1], [0]]))
    assert off.flatten().tolist() == [3.0, 1.0] and sc.flatten().tolist() == [4.0, 2.0]
    with pytest.raises(ValueError, match="std must be finite and > 0"):
        Normalize("dataset", mean=[0.0], std=[0.0])


@pytest.mark.parametrize("dtype,maximum", [(torch.uint8, 255), (torch.uint16, 65535), (torch.float32, 1.0)])
def test_range_mode(dtype, maximum):
    x = torch.tensor([[[0, maximum]]]).to(dtype)
    out = Normalize("range")(x)
    assert out.flatten().tolist() == [0.0, 1.0]


def test_identity_converts_only():
    x = torch.arange(12, dtype=torch.int16).reshape(1, 3, 4)
    out = Normalize("identity")(x)
    assert out.dtype == torch.float32 and torch.equal(out, x.float())


@pytest.mark.parametrize("mode", ["percentile", "zscore"])
def test_constant_image_gives_zeros_not_nan(mode):
    out = Normalize(mode)(torch.full((2, 16, 16), 1234, dtype=torch.uint16))
    assert torch.isfinite(out).all() and float(out.abs().max()) == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode must be one of"):
        Normalize("minmax")
    with pytest.raises(ValueError, match="low < high"):
        Normalize("percentile", low=99, high=1)
    with pytest.raises(ValueError, match=r"got shape \(4, 4\)"):
        Normalize("zscore")(torch.zeros(4, 4))


def test_integer_histogram_quantiles_are_exact():
    g = torch.Generator().manual_seed(1)
    for dtype, lo, hi in [(torch.uint8, 0, 255), (torch.int16, -300, 300), (torch.int32, 0, 1 << 20)]:
        x = torch.randint(lo, hi, (2, 33, 31), generator=g).to(dtype)
        off, sc = Normalize("percentile", low=2.0, high=97.0, max_samples=None).stats(x[None])
        ref = torch.quantile(
            x.reshape(2, -1).double(), torch.tensor([0.02, 0.97], dtype=torch.float64), dim=-1
        )
        torch.testing.assert_close(off.flatten().double(), ref[0], rtol=1e-6, atol=1e-3)
        torch.testing.assert_close((off + sc).flatten().double(), ref[1], rtol=1e-6, atol=1e-3)
