"""Intensity augmentations for fluorescence crops: brightness, contrast, gamma, noise, blur.

Probability semantics: in cellfm, ``p`` is always the probability that an augmentation IS applied
to a crop (p=1 always, p=0 never). The official DINOv2 blur wrapper passes ``1 - p`` to its
random-apply, so its "p=1.0" global crop is never blurred and its "p=0.1" crop is blurred 90% of
the time; cellfm does not reproduce that inversion (see `DINOV2_EFFECTIVE_BLUR_P`).

All ops take a float (N, C, H, W) batch and draw one set of parameters per crop (per channel
where stated) from the given `torch.Generator`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._utils import check_prob, check_range, rand, randn, uniform

# What the official recipe (global 1, global 2, local) actually does, given its inverted wrapper.
DINOV2_EFFECTIVE_BLUR_P = {"intended": (1.0, 0.1, 0.5), "effective": (0.0, 0.9, 0.5)}


def _selected(x: torch.Tensor, p: float | torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Indices of the samples an op with probability `p` (scalar or one per sample) applies to."""
    return (rand((x.shape[0],), generator, torch.device("cpu")) < p).nonzero().flatten().to(x.device)


def _factors(n: int, c: int, std: float, minimum: float, g: torch.Generator | None, dev) -> torch.Tensor:
    return (1.0 + std * randn((n, c, 1, 1), g, dev)).clamp(min=minimum)


class Brightness:
    """Multiply each channel by max(N(1, std), minimum), independently per channel, with probability p."""

    def __init__(self, p: float = 1.0, std: float = 0.2, minimum: float = 0.5):
        check_prob(p, "brightness p")
        if std < 0 or minimum < 0:
            raise ValueError(f"brightness std and minimum must be >= 0, got std={std}, minimum={minimum}")
        self.p, self.std, self.minimum = p, std, minimum

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        idx = _selected(x, self.p, generator)
        if idx.numel():
            x = x.clone()
            x[idx] = x[idx] * _factors(idx.numel(), x.shape[1], self.std, self.minimum, generator, x.device)
        return x


class Contrast:
    """Scale each channel about its mean by max(N(1, std), minimum), per channel, with probability p."""

    def __init__(self, p: float = 1.0, std: float = 0.2, minimum: float = 0.5):
        check_prob(p, "contrast p")
        if std < 0 or minimum < 0:
            raise ValueError(f"contrast std and minimum must be >= 0, got std={std}, minimum={minimum}")
        self.p, self.std, self.minimum = p, std, minimum

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        idx = _selected(x, self.p, generator)
        if idx.numel():
            x = x.clone()
            sub = x[idx]
            mean = sub.mean(dim=(-2, -1), keepdim=True)
            f = _factors(idx.numel(), x.shape[1], self.std, self.minimum, generator, x.device)
            x[idx] = (sub - mean) * f + mean
        return x


class Gamma:
    """x -> max(x, 0) ** gamma with gamma log-uniform in `gamma_range` per crop, with probability p.

    Assumes data scaled to about [0, 1] (percentile or range normalisation) before augmentation.
    """

    def __init__(self, p: float = 0.0, gamma_range: tuple[float, float] = (0.7, 1.5)):
        check_prob(p, "gamma p")
        self.p, self.gamma_range = p, check_range(gamma_range, "gamma_range", low=1e-3)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        idx = _selected(x, self.p, generator)
        if idx.numel():
            lo, hi = math.log(self.gamma_range[0]), math.log(self.gamma_range[1])
            gamma = uniform(lo, hi, (idx.numel(), 1, 1, 1), generator, x.device).exp()
            x = x.clone()
            x[idx] = x[idx].clamp(min=0.0).pow(gamma)
        return x


class GaussianNoise:
    """Additive N(0, sigma^2) noise, sigma uniform in `sigma_range` per crop, with probability p."""

    def __init__(self, p: float = 0.0, sigma_range: tuple[float, float] = (0.0, 0.05)):
        check_prob(p, "gaussian noise p")
        self.p, self.sigma_range = p, check_range(sigma_range, "sigma_range", low=0.0)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        idx = _selected(x, self.p, generator)
        if idx.numel():
            sub = x[idx]
            sigma = uniform(*self.sigma_range, (idx.numel(), 1, 1, 1), generator, x.device)
            x = x.clone()
            x[idx] = sub + sigma * randn(tuple(sub.shape), generator, x.device)
        return x


class PoissonGaussianNoise:
    """Shot noise Poisson(k * x) / k plus read noise N(0, s^2), with probability p.

    The photon gain k (photons per unit intensity) is log-uniform in `photons_range` and s uniform
    in `read_sigma_range`, per crop. Negative intensities are treated as zero signal.
    """

    def __init__(
        self,
        p: float = 0.0,
        photons_range: tuple[float, float] = (50.0, 500.0),
        read_sigma_range: tuple[float, float] = (0.0, 0.01),
    ):
        check_prob(p, "poisson noise p")
        self.p = p
        self.photons_range = check_range(photons_range, "photons_range", low=1e-6)
        self.read_sigma_range = check_range(read_sigma_range, "read_sigma_range", low=0.0)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        idx = _selected(x, self.p, generator)
        if not idx.numel():
            return x
        sub = x[idx]
        n = idx.numel()
        lo, hi = math.log(self.photons_range[0]), math.log(self.photons_range[1])
        k = uniform(lo, hi, (n, 1, 1, 1), generator, x.device).exp()
        s = uniform(*self.read_sigma_range, (n, 1, 1, 1), generator, x.device)
        gdev = generator.device if generator is not None else x.device
        rates = (sub.clamp(min=0.0) * k).to(gdev)
        shot = torch.poisson(rates, generator=generator).to(x.device) / k
        x = x.clone()
        x[idx] = shot + s * randn(tuple(sub.shape), generator, x.device)
        return x


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalised 1-D Gaussian kernels, one per sigma: (len(sigma), 2 * radius + 1)."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=sigma.device)
    k = torch.exp(-0.5 * (t[None, :] / sigma[:, None]) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) with one sigma per sample; reflect padding."""
    n, c, h, w = x.shape
    radius = max(1, int(math.ceil(3.0 * float(sigma.max()))))
    k = gaussian_kernels(sigma, radius).repeat_interleave(c, dim=0)  # (N*C, K)
    mode = "reflect" if radius < min(h, w) else "replicate"
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode=mode), k[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode=mode), k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


class GaussianBlur:
    """Gaussian blur with sigma uniform in `sigma_range` per crop, applied with probability p."""

    def __init__(self, p: float = 0.0, sigma_range: tuple[float, float] = (0.1, 2.0)):
        check_prob(p, "blur p")
        self.p, self.sigma_range = p, check_range(sigma_range, "sigma_range", low=1e-3)

    def __call__(
        self, x: torch.Tensor, generator: torch.Generator | None = None, p: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Blur; `p` (N,) overrides the probability per sample (e.g. per global crop index)."""
        idx = _selected(x, self.p if p is None else p, generator)
        if idx.numel():
            sigma = uniform(*self.sigma_range, (idx.numel(),), generator, x.device)
            x = x.clone()
            x[idx] = gaussian_blur(x[idx], sigma)
        return x
