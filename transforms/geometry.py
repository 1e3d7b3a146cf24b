"""Geometry: random resized crop (antialiased when shrinking), flips, the dihedral group, elastic warp."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._utils import check_prob, check_range, rand, randn, to_float

INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
Box = tuple[int, int, int, int]  # top, left, height, width


def sample_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> Box:
    """Random box covering a `scale` fraction of the area with aspect (w/h) log-uniform in `ratio`.

    Up to `attempts` draws; when none fits, the largest centred box with aspect clamped to `ratio`.
    """
    area = height * width
    r = rand((attempts, 4), generator, torch.device("cpu")).tolist()
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for u_area, u_ratio, u_top, u_left in r:
        target = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u_top * (height - h + 1)), height - h)
            left = min(int(u_left * (width - w + 1)), width - w)
            return top, left, h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(
    x: torch.Tensor, box: Box, size: int, interpolation: str = "bicubic", antialias: bool = True
) -> torch.Tensor:
    """Crop `box` from (..., H, W) (any dtype) and resize to (size, size) float32.

    Antialiasing is used only when the box is larger than the output (shrinking).
    """
    top, left, h, w = box
    crop = to_float(x[..., top : top + h, left : left + w])
    if (h, w) == (size, size):
        return crop.clone() if x.dtype == torch.float32 else crop
    squeeze = crop.ndim == 3
    crop4 = crop.unsqueeze(0) if squeeze else crop
    shrink = antialias and (h > size or w > size) and interpolation != "nearest"
    kw = {} if interpolation == "nearest" else {"align_corners": False, "antialias": shrink}
    out = F.interpolate(crop4, size=(size, size), mode=interpolation, **kw)
    return out[0] if squeeze else out


def _per_sample(x: torch.Tensor, choice: torch.Tensor, ops: list) -> torch.Tensor:
    """Apply ops[choice[i]] to sample i of a (B, C, H, W) batch, grouping samples by op."""
    out = torch.empty_like(x)
    for k, op in enumerate(ops):
        idx = (choice == k).nonzero().flatten()
        if idx.numel():
            out[idx] = op(x[idx])
    return out


def random_flip(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    p_horizontal: float = 0.5,
    p_vertical: float = 0.5,
) -> torch.Tensor:
    """Independent horizontal and vertical flips per sample of a (B, C, H, W) batch."""
    u = rand((x.shape[0], 2), generator, torch.device("cpu"))
    choice = (u[:, 0] < p_horizontal).long() + 2 * (u[:, 1] < p_vertical).long()
    ops = [lambda t: t, lambda t: t.flip(-1), lambda t: t.flip(-2), lambda t: t.flip(-2, -1)]
    return _per_sample(x, choice.to(x.device), ops)


def random_dihedral(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One of the 8 dihedral symmetries (rot90 k times, then an optional flip) per sample, uniformly.

    Non-square inputs keep their shape: only rotations by 0 and 180 degrees are used.
    """
    square = x.shape[-1] == x.shape[-2]
    choice = torch.randint(8, (x.shape[0],), generator=generator, device=_gen_device(generator))
    if not square:
        choice = choice - choice % 4 + (choice % 4 // 2) * 2  # rot 0 or 180, optional flip
    ops = [
        (
            lambda t, k=k, f=f: (
                torch.rot90(t, k, dims=(-2, -1)).flip(-1) if f else torch.rot90(t, k, dims=(-2, -1))
            )
        )
        for f in (False, True)
        for k in range(4)
    ]
    return _per_sample(x, choice.to(x.device), ops)


def dihedral_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 rot90 / flip symmetries of the last two (square) axes of `x`, the identity first: rot90 by
    0-3 quarter turns of `x`, then of `x` mirrored left-right (test-time averaging over the group)."""
    return [torch.rot90(v, k, dims=(-2, -1)) for v in (x, x.flip(-1)) for k in range(4)]


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def elastic_warp(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    alpha: float = 8.0,
    grid: int = 5,
    p: float = 1.0,
) -> torch.Tensor:
    """Smooth random warp of a float (B, C, H, W) batch, applied to each sample with probability `p`.

    Control points on a `grid` x `grid` lattice move by N(0, alpha) pixels; the field is
    upsampled bicubically and used with bilinear sampling and reflection padding.
    """
    check_prob(p, "elastic p")
    b, _, h, w = x.shape
    apply = rand((b,), generator, x.device) < p
    if alpha <= 0 or not bool(apply.any()):
        return x
    idx = apply.nonzero().flatten()
    n = idx.numel()
    disp = randn((n, 2, grid, grid), generator, x.device) * alpha
    disp = F.interpolate(disp, size=(h, w), mode="bicubic", align_corners=True)
    # pixel displacements to normalised [-1, 1] coordinates (x along width, y along height)
    disp = torch.stack([disp[:, 0] * 2.0 / w, disp[:, 1] * 2.0 / h], dim=-1)
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=x.device)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=x.device)
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
    warped = F.grid_sample(
        x[idx], base + disp, mode="bilinear", padding_mode="reflection", align_corners=False
    )
    out = x.clone()
    out[idx] = warped
    return out


class RandomResizedCrop:
    """Random resized crop of a (C, H, W) image to a square float32 `size`; see `sample_crop_box`."""

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.32, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        interpolation: str = "bicubic",
        antialias: bool = True,
    ):
        if size < 1:
            raise ValueError(f"crop size must be >= 1, got {size}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        self.scale = check_range(scale, "scale")
        self.ratio = check_range(ratio, "ratio")
        if not 0 < self.scale[0] <= self.scale[1] <= 1 or self.ratio[0] <= 0:
            raise ValueError(f"scale must lie in (0, 1] and ratio be > 0, got scale={scale}, ratio={ratio}")
        self.size, self.interpolation, self.antialias = int(size), interpolation, antialias

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        box = sample_crop_box(x.shape[-2], x.shape[-1], self.scale, self.ratio, generator)
        return resized_crop(x, box, self.size, self.interpolation, self.antialias)
