"""Random draws of the batched multi-crop (`BatchedMultiCrop`), all from one device `torch.Generator`:
crop boxes as `sample_crop_box` draws them, the dihedral / flip symmetry tables, brightness / contrast
factors and Gaussian noise (one draw order shared by both intensity paths)."""

from __future__ import annotations

import math

import torch

from ._utils import rand, randn


def between(lo: float, hi: float, u: torch.Tensor) -> torch.Tensor:
    return lo + (hi - lo) * u


def draw_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None,
    device: torch.device,
    attempts: int = 10,
) -> torch.Tensor:
    """(n, 4) long boxes (top, left, h, w), each drawn as `sample_crop_box` draws one: the first of
    `attempts` (area, aspect) draws that fits, else the largest centred box with a clamped aspect."""
    u = rand((n, attempts, 4), generator, device)
    target = height * width * between(scale[0], scale[1], u[..., 0])
    aspect = torch.exp(between(math.log(ratio[0]), math.log(ratio[1]), u[..., 1]))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]
    u_top, u_left = u[..., 2].gather(1, first)[:, 0], u[..., 3].gather(1, first)[:, 0]
    top = torch.minimum(torch.floor(u_top * (height - h + 1)), height - h)
    left = torch.minimum(torch.floor(u_left * (width - w + 1)), width - w)
    fh, fw = height, width  # fallback: as sample_crop_box
    if width / height < ratio[0]:
        fh = int(round(width / ratio[0]))
    elif width / height > ratio[1]:
        fw = int(round(height * ratio[1]))
    fallback = torch.tensor([(height - fh) // 2, (width - fw) // 2, fh, fw], device=device)
    boxes = torch.stack([top, left, h, w], dim=1).long()
    return torch.where(fits.any(dim=1, keepdim=True), boxes, fallback)


def symmetry_table(size: int, dihedral: bool, device: torch.device) -> torch.Tensor:
    """(8 or 4, size*size) pixel permutations: `random_dihedral`'s ops (rot90 k times, then an
    optional flip) or `random_flip`'s (none, horizontal, vertical, both)."""
    grid = torch.arange(size * size, device=device).view(size, size)
    if dihedral:
        ops = [torch.rot90(grid, k, dims=(0, 1)) for k in range(4)]
        ops += [op.flip(-1) for op in ops]
    else:
        ops = [grid, grid.flip(-1), grid.flip(-2), grid.flip(-2, -1)]
    return torch.stack([op.reshape(-1) for op in ops])


def symmetry_parts(dihedral: bool) -> torch.Tensor:
    """`symmetry_table`'s ops as (transpose, flip rows, flip columns), applied in that order."""
    grid = torch.arange(9).view(3, 3)
    table = symmetry_table(3, dihedral, grid.device)
    combos = [(t, r, c) for t in (False, True) for r in (False, True) for c in (False, True)]
    out = []
    for op in table:
        for t, r, c in combos:
            y = grid.T if t else grid
            y = y.flip(0) if r else y
            y = y.flip(1) if c else y
            if torch.equal(y.reshape(-1), op):
                out.append((t, r, c))
                break
    return torch.tensor(out)


def draw_factors(cfg, g: torch.Generator | None, dev: torch.device, n: int, c: int) -> torch.Tensor:
    """(n, c, 1, 1) brightness / contrast factors: 1 where crop i's coin (p) says no, else
    1 + std * N(0, 1) per channel, clamped at the minimum (one draw order for both intensity paths)."""
    on = (rand((n,), g, dev) < cfg.p)[:, None, None, None]
    f = (1.0 + cfg.std * randn((n, c, 1, 1), g, dev)).clamp(min=cfg.minimum)
    return torch.where(on, f, torch.ones_like(f))


def draw_gaussian_noise(
    gn, g: torch.Generator | None, dev: torch.device, shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(indices of the crops that get noise, their sigma-scaled N(0, 1) noise), or None: one draw
    order for both intensity paths."""
    if gn.p <= 0:
        return None
    n = shape[0]
    on = rand((n,), g, dev) < gn.p
    sigma = between(*gn.sigma, rand((n,), g, dev))
    idx = on.nonzero().flatten()
    if not idx.numel():
        return None
    return idx, sigma[idx, None, None, None] * randn((idx.numel(), *shape[1:]), g, dev)
