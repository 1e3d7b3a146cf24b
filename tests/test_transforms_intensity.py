"""Intensity augmentations: statistics over many draws, and the meaning of p."""

import importlib.util
import math
import os
import sys
import types

import pytest
import torch
from cellfm.transforms import (
    DINOV2_EFFECTIVE_BLUR_P,
    Brightness,
    Contrast,
    Gamma,
    GaussianBlur,
    GaussianNoise,
    PoissonGaussianNoise,
    gaussian_blur,
)

N = 4000


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_brightness_factor_distribution():
    x = torch.ones(N, 2, 4, 4)
    out = Brightness(p=1.0, std=0.2, minimum=0.5)(x, gen())
    f = out[:, :, 0, 0]
    assert torch.equal(out, f[:, :, None, None].expand_as(out))  # one factor per crop and channel
    assert abs(float(f.mean()) - 1.0) < 0.015 and abs(float(f.std()) - 0.2) < 0.015
    assert float(f.min()) >= 0.5
    assert abs(float(torch.corrcoef(f.T)[0, 1])) < 0.06  # channels independent
    clipped = Brightness(p=1.0, std=1.0, minimum=0.5)(x, gen())[:, 0, 0, 0]
    # max(N(1, 1), 0.5): P(factor == 0.5) = Phi(-0.5) ~ 0.31
    assert abs(float((clipped == 0.5).float().mean()) - 0.3085) < 0.03


def test_contrast_keeps_channel_mean_and_scales_spread():
    x = torch.rand(N, 2, 8, 8, generator=gen(1))
    out = Contrast(p=1.0, std=0.2, minimum=0.5)(x, gen())
    torch.testing.assert_close(out.mean(dim=(-2, -1)), x.mean(dim=(-2, -1)), atol=1e-5, rtol=0)
    ratio = out.std(dim=(-2, -1)) / x.std(dim=(-2, -1))
    assert abs(float(ratio.mean()) - 1.0) < 0.015 and abs(float(ratio.std()) - 0.2) < 0.015


@pytest.mark.parametrize("op", [Brightness, Contrast])
def test_factor_ops_probability(op):
    x = torch.rand(N, 1, 4, 4, generator=gen(2))
    out = op(p=0.3)(x, gen())
    changed = (out != x).flatten(1).any(1).float().mean()
    assert abs(float(changed) - 0.3) < 0.03


def test_gamma_log_uniform():
    x = torch.full((N, 1, 2, 2), 0.5)
    out = Gamma(p=1.0, gamma_range=(0.5, 2.0))(x, gen())
    gamma = torch.log(out[:, 0, 0, 0]) / math.log(0.5)
    lg = torch.log(gamma)
    assert float(gamma.min()) >= 0.5 - 1e-5 and float(gamma.max()) <= 2.0 + 1e-5
    assert abs(float(lg.mean())) < 0.03  # symmetric in log space around log(1) = 0
    assert abs(float(lg.std()) - 2 * math.log(2) / math.sqrt(12)) < 0.02
    neg = Gamma(p=1.0)(torch.full((4, 1, 2, 2), -1.0), gen())
    assert torch.equal(neg, torch.zeros_like(neg))  # negatives clamp to zero signal


def test_gaussian_noise_sigma_distribution():
    x = torch.zeros(1000, 1, 32, 32)
    out = GaussianNoise(p=1.0, sigma_range=(0.1, 0.3))(x, gen())
    per_crop = out.std(dim=(1, 2, 3))
    assert float(per_crop.min()) > 0.09 and float(per_crop.max()) < 0.31
    assert abs(float(per_crop.mean()) - 0.2) < 0.01
    assert abs(float(out.mean())) < 0.002
    expected_var = (0.3**3 - 0.1**3) / (3 * 0.2)
    assert abs(float(out.var()) - expected_var) / expected_var < 0.03


def test_poisson_gaussian_noise_mean_and_variance():
    k, s, level = 100.0, 0.02, 0.3
    x = torch.full((200, 1, 32, 32), level)
    shot = PoissonGaussianNoise(p=1.0, photons_range=(k, k), read_sigma_range=(0.0, 0.0))(x, gen())
    assert abs(float(shot.mean()) - level) < 0.002
    assert abs(float(shot.var()) - level / k) / (level / k) < 0.03
    torch.testing.assert_close(shot * k, torch.round(shot * k), atol=1e-3, rtol=0)  # photon counts
    both = PoissonGaussianNoise(p=1.0, photons_range=(k, k), read_sigma_range=(s, s))(x, gen())
    assert abs(float(both.var()) - (level / k + s * s)) / (level / k + s * s) < 0.03


def test_blur_preserves_constant_and_has_requested_sigma():
    const = torch.full((3, 2, 16, 16), 0.7)
    torch.testing.assert_close(gaussian_blur(const, torch.tensor([0.5, 1.0, 2.0])), const)
    impulse = torch.zeros(1, 1, 41, 41)
    impulse[..., 20, 20] = 1.0
    out = gaussian_blur(impulse, torch.tensor([2.0]))[0, 0]
    assert abs(float(out.sum()) - 1.0) < 1e-5
    r = torch.arange(41.0) - 20
    var_x = float((out.sum(0) * r**2).sum())
    assert abs(var_x - 4.0) < 0.1


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_blur_p_is_probability_of_applying(p):
    x = torch.rand(N, 1, 12, 12, generator=gen(3))
    out = GaussianBlur(p=p, sigma_range=(1.0, 2.0))(x, gen())
    blurred = (out - x).abs().flatten(1).amax(1) > 1e-6
    assert abs(float(blurred.float().mean()) - p) < 0.03
    if p == 1.0:
        assert bool(blurred.all())
    if p == 0.0:
        assert torch.equal(out, x)


def test_blur_per_sample_probability_override():
    x = torch.rand(2000, 1, 8, 8, generator=gen(4))
    p = torch.tensor([1.0, 0.0]).repeat(1000)  # even samples always, odd never
    out = GaussianBlur(sigma_range=(1.0, 1.0))(x, gen(), p=p)
    blurred = (out - x).abs().flatten(1).amax(1) > 1e-6
    assert bool(blurred[0::2].all()) and not bool(blurred[1::2].any())


def test_official_dinov2_blur_wrapper_is_inverted(monkeypatch):
    """Load the oracle's GaussianBlur with a minimal torchvision stand-in and read the apply probability."""

    class RandomApply:  # torchvision semantics: the transforms run with probability p
        def __init__(self, transforms, p=0.5):
            self.transforms, self.p = transforms, p

    class _Transforms(types.SimpleNamespace):
        def __getattr__(self, name):  # everything else the module touches at import time
            return type(name, (), {"__init__": lambda self, *a, **k: None})

    tv = types.ModuleType("torchvision")
    tv.transforms = _Transforms(
        RandomApply=RandomApply, InterpolationMode=types.SimpleNamespace(BICUBIC="bicubic")
    )
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    origin = importlib.util.find_spec("dinov2").origin
    spec = importlib.util.spec_from_file_location(
        "_dinov2_tf", os.path.join(os.path.dirname(origin), "data", "transforms.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    intended = DINOV2_EFFECTIVE_BLUR_P["intended"]
    effective = tuple(mod.GaussianBlur(p=p).p for p in intended)
    assert effective == pytest.approx(DINOV2_EFFECTIVE_BLUR_P["effective"])
    # cellfm's p is the apply probability: p=1.0 always blurs (checked above), unlike the oracle's 0.0


def test_ops_are_seeded_and_dtype_preserving():
    x = torch.rand(8, 3, 16, 16)
    for op in (
        Brightness(),
        Contrast(),
        Gamma(p=1.0),
        GaussianNoise(p=1.0),
        PoissonGaussianNoise(p=1.0),
        GaussianBlur(p=1.0),
    ):
        a, b = op(x, gen(7)), op(x, gen(7))
        assert torch.equal(a, b) and a.dtype == torch.float32 and torch.isfinite(a).all()
        assert not torch.equal(op(x, gen(8)), a)


def test_invalid_probability():
    with pytest.raises(ValueError, match="blur p must be a probability"):
        GaussianBlur(p=1.5)
