"""Multi-crop for SSL: 2 global + N local crops of one field (or a batch), normalised float32."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch

from ._utils import as_tensor, check_finite, check_prob, check_range, check_rank
from .channels import DropChannel, RescaleChannel, check_channels, sample_channel
from .config import (
    AugmentConfig,
    ChannelConfig,
    GeometryConfig,
    IntensityConfig,
    NormalizeConfig,
)
from .geometry import (
    INTERPOLATIONS,
    elastic_warp,
    random_dihedral,
    random_flip,
    resized_crop,
    sample_crop_box,
)
from .intensity import Brightness, Contrast, Gamma, GaussianBlur, GaussianNoise, PoissonGaussianNoise
from .normalize import Normalize

NAN_POLICIES = ("error", "replace")


class MultiCrop:
    """DINOv2-style multi-crop for C-channel microscopy fields.

    Per crop: random resized crop (antialiased when shrinking) of the field normalised by
    `input_norm` (fitted once on the whole field, default 1/99.8 percentiles); a dihedral
    symmetry (or flips) and optional elastic warp; intensity augmentations; protected-channel
    rescale; `output_norm` (default per-crop per-channel z-score, fitted on the crop *before*
    the intensity augmentations so they are not normalised away; its std floor `eps` = 0.01 is in
    units of the input-normalised field, so flat background crops are not blown up to unit
    variance); channel drop (dropped channels are exactly 0). Constant channels give exact zeros.
    With Bag-of-Channels one channel per field is sampled and all crops are 1-channel.

    ``__call__`` takes one (C, H, W) field and returns ``{"global_crops": [2 x (C, G, G)],
    "local_crops": [N x (C, L, L)]}`` (+ ``channel_index``/``channel_name`` with Bag-of-Channels);
    ``batch`` takes (B, C, H, W) and returns lists of (B, C, S, S) tensors instead. Randomness comes
    from the `generator` argument, else the one built from `seed`, else torch's global RNG (the
    right choice inside DataLoader workers, which torch seeds per worker).
    """

    def __init__(
        self,
        global_crops_size: int = 224,
        local_crops_size: int = 96,
        local_crops_number: int = 8,
        global_crops_scale: tuple[float, float] = (0.32, 1.0),
        local_crops_scale: tuple[float, float] = (0.05, 0.32),
        *,
        geometry: GeometryConfig | None = None,
        intensity: IntensityConfig | None = None,
        channels: ChannelConfig | None = None,
        input_norm: NormalizeConfig | None = None,
        output_norm: NormalizeConfig | None = None,
        nan_policy: str = "error",
        nan_fill: float = 0.0,
        seed: int | None = None,
    ):
        if global_crops_size < 1 or local_crops_size < 1 or local_crops_number < 0:
            raise ValueError(
                f"crop sizes must be >= 1 and local_crops_number >= 0, got global={global_crops_size}, "
                f"local={local_crops_size}, number={local_crops_number}"
            )
        for name, sc in (
            ("global_crops_scale", global_crops_scale),
            ("local_crops_scale", local_crops_scale),
        ):
            sc = check_range(sc, name)
            if not 0.0 < sc[0] <= sc[1] <= 1.0:
                raise ValueError(f"{name} must satisfy 0 < min <= max <= 1, got {sc}")
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
        self.global_crops_size, self.local_crops_size = int(global_crops_size), int(local_crops_size)
        self.local_crops_number = int(local_crops_number)
        self.global_crops_scale = tuple(global_crops_scale)
        self.local_crops_scale = tuple(local_crops_scale)
        self.nan_policy, self.nan_fill = nan_policy, float(nan_fill)
        self.geometry = geo = geometry or GeometryConfig()
        self.intensity = ints = intensity or IntensityConfig()
        self.channels = ch = channels or ChannelConfig()
        self.input_norm = Normalize(**asdict(input_norm or NormalizeConfig(mode="percentile")))
        self.output_norm = Normalize(**asdict(output_norm or NormalizeConfig(mode="zscore", eps=0.01)))

        if geo.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"geometry.interpolation must be one of {INTERPOLATIONS}, got {geo.interpolation!r}"
            )
        check_range(geo.ratio, "geometry.ratio", low=1e-6)
        if geo.small_image not in ("error", "upsample"):
            raise ValueError(f"geometry.small_image must be 'error' or 'upsample', got {geo.small_image!r}")
        for name in ("p_horizontal_flip", "p_vertical_flip", "elastic_p", "global_same_box_p"):
            check_prob(getattr(geo, name), f"geometry.{name}")
        if geo.elastic_grid < 2:
            raise ValueError(f"geometry.elastic_grid must be >= 2, got {geo.elastic_grid}")

        self.brightness = Brightness(ints.brightness.p, ints.brightness.std, ints.brightness.minimum)
        self.contrast = Contrast(ints.contrast.p, ints.contrast.std, ints.contrast.minimum)
        self.gamma = Gamma(ints.gamma.p, ints.gamma.range)
        self.blur = GaussianBlur(0.0, ints.blur.sigma)
        for i, p in enumerate((*ints.blur.p_global, ints.blur.p_local)):
            check_prob(p, f"intensity.blur p[{i}]")
        self.poisson = PoissonGaussianNoise(
            ints.poisson_noise.p, ints.poisson_noise.photons, ints.poisson_noise.read_sigma
        )
        self.noise = GaussianNoise(ints.gaussian_noise.p, ints.gaussian_noise.sigma)

        if ch.num_channels is not None:
            if ch.num_channels < 1:
                raise ValueError(f"channels.num_channels must be >= 1, got {ch.num_channels}")
            check_channels(ch.protected, ch.num_channels, "channels.protected")
            if ch.names is not None and len(ch.names) != ch.num_channels:
                raise ValueError(
                    f"channels.names has {len(ch.names)} entries but num_channels is {ch.num_channels}"
                )
        if len(set(ch.protected)) != len(ch.protected):
            raise ValueError(f"channels.protected has duplicates: {ch.protected}")
        self.drop = DropChannel(ch.drop_p, ch.protected)
        self.rescale = RescaleChannel(ch.rescale_p, ch.protected, ch.rescale_range)
        self.generator = None if seed is None else torch.Generator().manual_seed(int(seed))

    @classmethod
    def from_config(cls, cfg: AugmentConfig, seed: int | None = None) -> MultiCrop:
        """Build from a typed `AugmentConfig` (see `load_augment_config`)."""
        c = cfg.crops
        return cls(
            c.global_crops_size,
            c.local_crops_size,
            c.local_crops_number,
            c.global_crops_scale,
            c.local_crops_scale,
            geometry=cfg.geometry,
            intensity=cfg.intensity,
            channels=cfg.channels,
            input_norm=cfg.input_norm,
            output_norm=cfg.output_norm,
            nan_policy=cfg.nan_policy,
            nan_fill=cfg.nan_fill,
            seed=seed,
        )

    def __repr__(self) -> str:
        return (
            f"MultiCrop(global={self.global_crops_size}x2, "
            f"local={self.local_crops_size}x{self.local_crops_number}, "
            f"input_norm={self.input_norm.mode}, output_norm={self.output_norm.mode})"
        )

    def __call__(self, image: torch.Tensor | np.ndarray, generator: torch.Generator | None = None) -> dict:
        """Crops of one (C, H, W) field."""
        x = as_tensor(image)
        check_rank(x, 3)
        globals_, locals_, cidx = self._run(x[None], generator)
        out = {"global_crops": [t[0] for t in globals_], "local_crops": [t[0] for t in locals_]}
        if cidx is not None:
            out["channel_index"] = int(cidx[0])
            if self.channels.names is not None:
                out["channel_name"] = self.channels.names[int(cidx[0])]
        return out

    def batch(self, images: torch.Tensor | np.ndarray, generator: torch.Generator | None = None) -> dict:
        """Crops of a (B, C, H, W) batch: lists of (B, C, S, S) tensors (+ ``channel_index`` (B,))."""
        x = as_tensor(images, "images")
        check_rank(x, 4, "images")
        globals_, locals_, cidx = self._run(x, generator)
        out = {"global_crops": globals_, "local_crops": locals_}
        if cidx is not None:
            out["channel_index"] = cidx
        return out

    def _check(self, x: torch.Tensor) -> None:
        c, h, w = x.shape[-3:]
        ch = self.channels
        if ch.num_channels is not None and c != ch.num_channels:
            raise ValueError(
                f"image has {c} channels (shape {tuple(x.shape)}) but the config expects {ch.num_channels}"
            )
        check_channels(ch.protected, c, "channels.protected")
        need = max(self.global_crops_size, self.local_crops_size if self.local_crops_number else 0)
        if min(h, w) < need and self.geometry.small_image == "error":
            raise ValueError(
                f"image of shape {tuple(x.shape)} is smaller than the {need} px crop; use larger fields or "
                f"set geometry.small_image='upsample'"
            )

    def _run(self, x: torch.Tensor, g: torch.Generator | None) -> tuple[list, list, torch.Tensor | None]:
        g = g if g is not None else self.generator
        self._check(x)
        x = check_finite(x, self.nan_policy, self.nan_fill)
        b, c = x.shape[:2]
        cidx = None
        if self.channels.bag_of_channels:
            picks = [sample_channel(c, g, self.channels.channel_weights) for _ in range(b)]
            cidx = torch.tensor(picks, dtype=torch.long)
            x = x[torch.arange(b), cidx][:, None]
        in_stats = self.input_norm.stats(x, None if cidx is None else cidx[:, None])
        ints = self.intensity
        same = None
        if self.geometry.global_same_box_p > 0:
            same = (torch.rand(b, generator=g) < self.geometry.global_same_box_p).tolist()
        globals_ = self._crop_set(
            x, in_stats, 2, self.global_crops_size, self.global_crops_scale, ints.blur.p_global, cidx, g, same
        )
        blur_local = (ints.blur.p_local,) * self.local_crops_number
        locals_ = self._crop_set(
            x,
            in_stats,
            self.local_crops_number,
            self.local_crops_size,
            self.local_crops_scale,
            blur_local,
            cidx,
            g,
        )
        return globals_, locals_, cidx

    def _crop_set(self, x, in_stats, n, size, scale, blur_p, cidx, g, same=None) -> list[torch.Tensor]:
        """n crops of every field in x, augmented together as one (n*B, C, S, S) batch, crop-major;
        field i's crops after the first reuse its first box where `same[i]` is true."""
        if n == 0:
            return []
        b, _, h, w = x.shape
        geo = self.geometry
        off, sc = in_stats
        crops, first = [], []
        for k in range(n):
            for i in range(b):
                if k > 0 and same is not None and same[i]:
                    top, left, bh, bw = first[i]
                else:
                    top, left, bh, bw = sample_crop_box(h, w, scale, geo.ratio, g)
                if k == 0:
                    first.append((top, left, bh, bw))
                # normalise the box before resampling: constant channels become exact zeros
                box = x[i : i + 1, :, top : top + bh, left : left + bw]
                region = self.input_norm.apply(box, off[i : i + 1], sc[i : i + 1])[0]
                crops.append(resized_crop(region, (0, 0, bh, bw), size, geo.interpolation, geo.antialias))
        y = torch.stack(crops)
        y = (
            random_dihedral(y, g)
            if geo.dihedral
            else random_flip(y, g, geo.p_horizontal_flip, geo.p_vertical_flip)
        )
        if geo.elastic_p > 0:
            y = elastic_warp(y, g, geo.elastic_alpha, geo.elastic_grid, geo.elastic_p)
        cid = None if cidx is None else cidx.repeat(n)[:, None]
        out_stats = self.output_norm.stats(y, cid)
        y = self.brightness(y, g)
        y = self.contrast(y, g)
        y = self.gamma(y, g)
        y = self.blur(y, g, p=torch.tensor(blur_p, dtype=torch.float32).repeat_interleave(b))
        y = self.poisson(y, g)
        y = self.noise(y, g)
        if cid is None:
            y = self.rescale(y, g)
        elif self.channels.protected:
            sel = (
                torch.isin(cid[:, 0], torch.tensor(self.channels.protected)).nonzero().flatten().to(y.device)
            )
            if sel.numel():
                y = y.clone()
                y[sel] = RescaleChannel(self.rescale.p, [0], self.rescale.factor_range)(y[sel], g)
        y = self.output_norm.apply(y, *out_stats)
        y = self.drop(y, g)
        return list(y.split(b))
