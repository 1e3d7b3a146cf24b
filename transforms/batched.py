"""Multi-crop of a whole batch on the training device: the same recipe as `MultiCrop`, batched.

`BatchedMultiCrop` takes raw (B, C, H, W) regions in their native dtype (uint16 straight from the
stores) on any device and returns every global and local crop of the batch, crop-major, in a few
batched ops: crop boxes drawn together, all boxes resampled by two matrix products per crop
(`resample_boxes`), dihedral symmetries as one gather, intensity / blur / noise / channel ops as
masked element-wise ops. Randomness comes from one `torch.Generator` on the device (reproducible
per rank and step); no per-sample Python loop and no host round trip per op.

Same semantics as `MultiCrop` (same distributions of boxes, symmetries and intensity parameters,
same normalisation order); with the same boxes and symmetries it gives the same pixels. The RNG
streams differ, so the two paths draw different crops from the same seed.
"""

from __future__ import annotations

import math

import torch

from ._utils import check_finite, dtype_max, rand, randn, to_float
from .channels import check_channels
from .config import AugmentConfig
from .draws import (
    between,
    draw_boxes,
    draw_factors,
    draw_gaussian_noise,
    symmetry_parts,
    symmetry_table,
)
from .intensity import gaussian_blur
from .multicrop import MultiCrop
from .resample import blur_square, resample_boxes


class BatchedMultiCrop:
    """`MultiCrop`'s recipe for a batch on one device; see the module docstring.

    ``__call__(x, generator)`` returns ``{"global_crops": (2B, C, G, G), "local_crops":
    (N*B, C, L, L)}`` crop-major (all images' crop 0, then crop 1, ...) in `dtype`, plus
    ``channel_index`` (B,) with Bag-of-Channels. Elastic warps are not batched and are refused.
    """

    def __init__(self, recipe: MultiCrop, dtype: torch.dtype = torch.float32):
        if recipe.geometry.elastic_p > 0:
            raise ValueError("the batched multi-crop has no elastic warp; set augment.device: cpu")
        if recipe.geometry.global_same_box_p > 0:
            raise ValueError(
                "the batched multi-crop draws every box independently (geometry.global_same_box_p="
                f"{recipe.geometry.global_same_box_p}); set augment.device: cpu or global_same_box_p: 0"
            )
        self.recipe, self.dtype = recipe, dtype
        self._tables: dict[tuple, torch.Tensor] = {}
        out = recipe.output_norm
        # Without gamma and Poisson noise every op after the resampling is affine per crop and
        # channel (blur is linear and keeps constants): fold them into one multiply-add.
        self.fold_affine = (
            recipe.intensity.gamma.p == 0
            and recipe.intensity.poisson_noise.p == 0
            and not (out.clip and out.mode in ("percentile", "range"))
        )

    @classmethod
    def from_config(cls, cfg: AugmentConfig, dtype: torch.dtype = torch.float32) -> BatchedMultiCrop:
        return cls(MultiCrop.from_config(cfg), dtype)

    def __repr__(self) -> str:
        r = self.recipe
        return (
            f"BatchedMultiCrop(global={r.global_crops_size}x2, local={r.local_crops_size}x"
            f"{r.local_crops_number}, dtype={self.dtype})"
        )

    # -- checks --------------------------------------------------------------------------------------
    def check(self, x: torch.Tensor, names: list[str] | None = None) -> None:
        """Raise on a batch the recipe cannot crop; `names` (one per image) go into the message."""
        if x.ndim != 4:
            raise ValueError(f"batched multi-crop expects (B, C, H, W), got shape {tuple(x.shape)}")
        self.recipe._check(x)
        if x.is_floating_point():
            bad = (~torch.isfinite(x)).flatten(1).any(dim=1)
            if self.recipe.nan_policy == "error" and bool(bad.any()):
                i = int(bad.nonzero()[0])
                where = names[i] if names else f"image {i}"
                raise ValueError(
                    f"{where}: region of shape {tuple(x.shape[1:])} has "
                    f"{int((~torch.isfinite(x[i])).sum())} NaN/Inf pixels; clean the data or set "
                    f"augment.nan_policy: replace"
                )

    # -- the pipeline --------------------------------------------------------------------------------
    def __call__(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        names: list[str] | None = None,
        native_dtype: torch.dtype | None = None,
    ) -> dict:
        """Crops of raw regions `x` (B, C, H, W) on their device. `native_dtype` is the stores' dtype
        when `x` was widened on the way (uint16 carried as int32), for ``range`` normalisation."""
        r = self.recipe
        self.check(x, names)
        x = check_finite(x, r.nan_policy, r.nan_fill)
        b, c = x.shape[:2]
        dev = x.device
        cidx = None
        if r.channels.bag_of_channels:
            cidx = self._pick_channels(b, c, generator, dev)
            x = x[torch.arange(b, device=dev), cidx][:, None]
        off, sc = r.input_norm.stats(x, None if cidx is None else cidx[:, None])
        if r.input_norm.mode == "range" and native_dtype is not None:
            sc = torch.full_like(sc, dtype_max(native_dtype))
        xf = r.input_norm.apply(x, off, sc)
        blur = r.intensity.blur
        out = {
            "global_crops": self._crop_set(xf, 2, r.global_crops_size, r.global_crops_scale,
                                           blur.p_global, cidx, generator),
            "local_crops": self._crop_set(xf, r.local_crops_number, r.local_crops_size, r.local_crops_scale,
                                          (blur.p_local,) * r.local_crops_number, cidx, generator),
        }  # fmt: skip
        if cidx is not None:
            out["channel_index"] = cidx
        return out

    def _pick_channels(self, b: int, c: int, g: torch.Generator | None, dev: torch.device) -> torch.Tensor:
        weights = self.recipe.channels.channel_weights
        w = (
            torch.ones(c, device=dev)
            if weights is None
            else torch.tensor(weights, device=dev, dtype=torch.float32)
        )
        if w.numel() != c:
            raise ValueError(f"channel weights have {w.numel()} entries but the image has {c} channels")
        cum = torch.cumsum(w, 0) / w.sum()
        return torch.searchsorted(cum, rand((b,), g, dev)).clamp(max=c - 1)

    def _crop_set(self, xf, n, size, scale, blur_p, cidx, g) -> torch.Tensor:
        b, c, h, w = xf.shape
        dev = xf.device
        if n == 0:
            return xf.new_zeros((0, c, size, size), dtype=self.dtype)
        r = self.recipe
        geo = r.geometry
        boxes = draw_boxes(n * b, h, w, scale, geo.ratio, g, dev)
        image = torch.arange(n * b, device=dev) % b
        choice = self._draw_symmetries(n * b, g, dev)
        if dev.type == "cpu":  # the symmetry folded into the resampling weights
            y = resample_boxes(xf, image, boxes, size, geo.interpolation, geo.antialias,
                               parts=self._parts(dev)[choice])  # fmt: skip
        else:
            y = resample_boxes(xf, image, boxes, size, geo.interpolation, geo.antialias)
            y = self.symmetries(y, choice)
        cid = None if cidx is None else cidx.repeat(n)[:, None]
        mean = y.mean(dim=(-2, -1), keepdim=True)
        out_stats = self._output_stats(y, cid, mean)
        blur_p = torch.tensor(blur_p, device=dev).repeat_interleave(b)
        if self.fold_affine:
            return self._folded(y, out_stats, blur_p, cid, g, mean).to(self.dtype)
        y = self.intensity(y, g)
        y = self.blur(y, blur_p, g)
        y = self.noise(y, g)
        y = self.rescale(y, cid, g)
        y = r.output_norm.apply(y, *out_stats)
        y = self.drop(y, g)
        return y.to(self.dtype)

    def _output_stats(
        self, y: torch.Tensor, cid: torch.Tensor | None, mean: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The output normalisation's statistics; z-scores in two fast passes from the crops' `mean`
        (same values as `Normalize.stats`, whose Welford kernel is several times slower on CPU)."""
        norm = self.recipe.output_norm
        n_px = y.shape[-1] * y.shape[-2]
        if norm.mode != "zscore" or (norm.max_samples is not None and n_px > norm.max_samples):
            return norm.stats(y, cid)
        std = (y - mean).square_().mean(dim=(-2, -1), keepdim=True).sqrt_()
        return mean, std.clamp_(min=norm.eps)

    def _folded(self, y, stats, blur_p, cid, g, mean) -> torch.Tensor:
        """Brightness, contrast, blur, Gaussian noise, rescale, output norm and drop as one
        per-crop-channel map ``A * blur(y) + B`` plus scaled noise, in place on `y` (the crops,
        whose per-channel `mean` is given). Draws the random numbers in the order and shapes of the
        op-by-op path, so both give the same crops."""
        ints = self.recipe.intensity
        n, c = y.shape[:2]
        dev = y.device
        a = torch.ones(n, c, 1, 1, device=dev)
        b = torch.zeros(n, c, 1, 1, device=dev)
        for cfg, centred in ((ints.brightness, False), (ints.contrast, True)):
            if cfg.p <= 0:
                continue
            f = draw_factors(cfg, g, dev, n, c)
            # brightness: f * y; contrast: f * y + (1 - f) * mean(y), with y = a * y0 + b
            b = f * b + (1 - f) * (a * mean + b) if centred else f * b
            a = f * a
        y = self.blur(y, blur_p, g, inplace=True)
        noise = draw_gaussian_noise(ints.gaussian_noise, g, dev, tuple(y.shape))
        s = torch.ones(n, c, 1, 1, device=dev)  # what multiplies the noise
        factor = self.rescale(torch.ones(n, c, 1, 1, device=dev), cid, g)
        off, sc = stats
        a, b, s = a * factor / sc, (b * factor - off) / sc, s * factor / sc
        keep = self.drop(torch.ones(n, c, 1, 1, device=dev), g)
        a, b, s = a * keep, b * keep, s * keep
        y = y.mul_(a).add_(b)
        if noise is not None:
            idx, eps = noise
            y.index_add_(0, idx, eps.mul_(s[idx]))
        return y

    # -- geometry ------------------------------------------------------------------------------------
    def _draw_symmetries(self, n: int, g: torch.Generator | None, dev: torch.device) -> torch.Tensor:
        geo = self.recipe.geometry
        if geo.dihedral:
            return torch.randint(8, (n,), generator=g, device=dev)
        u = rand((n, 2), g, dev)
        return (u[:, 0] < geo.p_horizontal_flip).long() + 2 * (u[:, 1] < geo.p_vertical_flip).long()

    def _parts(self, dev: torch.device) -> torch.Tensor:
        """(8 or 4, 3) bool: each symmetry as (transpose, flip rows, flip columns) of the crop."""
        key = ("parts", self.recipe.geometry.dihedral, dev)
        if key not in self._tables:
            self._tables[key] = symmetry_parts(self.recipe.geometry.dihedral).to(dev)
        return self._tables[key]

    def symmetries(self, y: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
        """Apply symmetry `choice[i]` (an index into `random_dihedral`'s or `random_flip`'s ops) to
        crop i of (n, C, S, S), as one gather."""
        n, c, s, _ = y.shape
        key = (s, self.recipe.geometry.dihedral, y.device)
        if key not in self._tables:
            self._tables[key] = symmetry_table(s, self.recipe.geometry.dihedral, y.device)
        idx = self._tables[key][choice][:, None, :].expand(n, c, s * s)
        return y.reshape(n, c, s * s).gather(2, idx).view(n, c, s, s)

    # -- intensity -----------------------------------------------------------------------------------
    def intensity(self, y: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        """Brightness, contrast, gamma: per-crop coins, per-channel factors, masked."""
        ints = self.recipe.intensity
        n, c = y.shape[:2]
        dev = y.device
        for cfg, centred in ((ints.brightness, False), (ints.contrast, True)):
            if cfg.p <= 0:
                continue
            f = draw_factors(cfg, g, dev, n, c)
            mean = y.mean(dim=(-2, -1), keepdim=True) if centred else 0.0
            y = (y - mean) * f + mean
        gam = ints.gamma
        if gam.p > 0:
            on = (rand((n,), g, dev) < gam.p)[:, None, None, None]
            e = torch.exp(between(math.log(gam.range[0]), math.log(gam.range[1]), rand((n, 1, 1, 1), g, dev)))
            y = torch.where(on, y.clamp(min=0.0).pow(e), y)
        return y

    def blur(
        self, y: torch.Tensor, p: torch.Tensor, g: torch.Generator | None, inplace: bool = False
    ) -> torch.Tensor:
        """Gaussian blur of the crops whose coin (probability `p[i]`) comes up; the others are kept
        (`inplace`: the blurred crops are written into `y`)."""
        cfg = self.recipe.intensity.blur
        if not bool((p > 0).any()):
            return y
        n = y.shape[0]
        on = rand((n,), g, y.device) < p
        sigma = between(cfg.sigma[0], cfg.sigma[1], rand((n,), g, y.device))
        if not bool(on.any()):
            return y
        idx = on.nonzero().flatten()
        y = y if inplace else y.clone()
        square = y.device.type == "cpu" and y.shape[-1] == y.shape[-2]
        y[idx] = (blur_square if square else gaussian_blur)(y[idx], sigma[idx])
        return y

    def noise(self, y: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        """Poisson-Gaussian shot + read noise, then additive Gaussian noise (per-crop parameters)."""
        ints = self.recipe.intensity
        n = y.shape[0]
        dev = y.device
        pn = ints.poisson_noise
        if pn.p > 0:
            on = (rand((n,), g, dev) < pn.p)[:, None, None, None]
            lo, hi = math.log(pn.photons[0]), math.log(pn.photons[1])
            k = torch.exp(between(lo, hi, rand((n, 1, 1, 1), g, dev)))
            s = between(*pn.read_sigma, rand((n, 1, 1, 1), g, dev))
            shot = torch.poisson(y.clamp(min=0.0) * k, generator=g) / k
            y = torch.where(on, shot + s * randn(tuple(y.shape), g, dev), y)
        noise = draw_gaussian_noise(ints.gaussian_noise, g, dev, tuple(y.shape))
        if noise is not None:
            idx, eps = noise
            y = y.clone()
            y[idx] += eps
        return y

    # -- channels ------------------------------------------------------------------------------------
    def rescale(self, y: torch.Tensor, cid: torch.Tensor | None, g: torch.Generator | None) -> torch.Tensor:
        """Multiply the protected channels by one factor per crop, with probability rescale_p."""
        ch = self.recipe.channels
        if ch.rescale_p <= 0 or not ch.protected:
            return y
        n, c = y.shape[:2]
        dev = y.device
        on = rand((n,), g, dev) < ch.rescale_p
        f = between(*ch.rescale_range, rand((n,), g, dev))
        if cid is None:
            check_channels(ch.protected, c, "channels.protected")
            sel = torch.zeros(n, c, dtype=torch.bool, device=dev)
            sel[:, ch.protected] = True
        else:  # Bag-of-Channels: the one plane is rescaled when it is a protected channel
            sel = torch.isin(cid, torch.tensor(ch.protected, device=dev))
        factor = torch.where(sel & on[:, None], f[:, None], torch.ones_like(sel, dtype=y.dtype))
        return y * factor[..., None, None]

    def drop(self, y: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        """Zero one non-protected channel per crop with probability drop_p (never the only channel)."""
        ch = self.recipe.channels
        n, c = y.shape[:2]
        candidates = self.recipe.drop.droppable(c)
        if ch.drop_p <= 0 or not candidates:
            return y
        dev = y.device
        u = rand((n, 2), g, dev)
        pick = (u[:, 1] * len(candidates)).long().clamp(max=len(candidates) - 1)
        col = torch.tensor(candidates, device=dev)[pick]
        hit = (u[:, 0] < ch.drop_p)[:, None] & (torch.arange(c, device=dev)[None, :] == col[:, None])
        return y.masked_fill(hit[..., None, None], 0.0)


def widen(x: torch.Tensor, native_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Raw regions to a dtype every device kernel supports: uint16 (or uint16 carried bit for bit as
    int16, `native_dtype` uint16) -> int32, uint32 -> int64, other integers -> float32."""
    if x.dtype == torch.uint16 or (x.dtype == torch.int16 and native_dtype == torch.uint16):
        return x.view(torch.int16).to(torch.int32) & 0xFFFF
    if x.dtype == torch.uint32 or (x.dtype == torch.int32 and native_dtype == torch.uint32):
        return x.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    return x if x.is_floating_point() or x.dtype in (torch.int32, torch.int64) else to_float(x)


__all__ = ["BatchedMultiCrop", "draw_boxes", "widen"]
