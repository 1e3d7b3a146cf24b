"""Batched resized crops as two matrix products per crop: ``out = Wy @ window @ Wx^T``.

Each row of ``Wx`` (``Wy``) holds the interpolation weights `torch.nn.functional.interpolate`
uses for one output column (row) of a crop: bicubic (A = -0.75) or bilinear with border clamping,
nearest, or, with antialiasing, the widened kernels torch uses (bicubic A = -0.5, triangle), so a
batch of crops with different boxes and scales resamples in a few batched ops on any device and
gives the pixels `resized_crop` gives for the same boxes (float rounding aside).
"""

from __future__ import annotations

import math

import torch

from .geometry import INTERPOLATIONS
from .intensity import gaussian_kernels


def _cubic(t: torch.Tensor, a: float) -> torch.Tensor:
    """Keys' cubic convolution kernel at distance t (any sign)."""
    t = t.abs()
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((t - 5) * t + 8) * t * a - 4 * a
    return torch.where(t < 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def _plain_taps(length: torch.Tensor, size: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, weight) of shape (n, size, K) within a box of `length` pixels, as interpolate without
    antialiasing: source positions clamped to the box."""
    scale = length.to(torch.float32)[:, None] / size
    i = torch.arange(size, device=length.device, dtype=torch.float32)[None, :]
    last = (length - 1)[:, None, None]
    if mode == "nearest":
        idx = torch.minimum(torch.floor(i * scale).long()[..., None], last)
        return idx, torch.ones(idx.shape, device=length.device)
    src = scale * (i + 0.5) - 0.5
    if mode == "bilinear":
        src = src.clamp(min=0.0)
        x0 = torch.floor(src)
        lam = (src - x0)[..., None]
        x0 = x0.long()[..., None]
        idx = torch.cat([x0, torch.minimum(x0 + 1, last)], dim=-1)
        return idx, torch.cat([1 - lam, lam], dim=-1)
    x0 = torch.floor(src)
    t = (src - x0)[..., None]
    k = torch.arange(-1, 3, device=length.device, dtype=torch.float32)
    weight = _cubic(t - k, -0.75)
    idx = (x0.long()[..., None] + k.long()).clamp(min=0)
    return torch.minimum(idx, last), weight


def _antialias_taps(length: torch.Tensor, size: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, weight) as interpolate(antialias=True): kernel support widened by the shrink factor,
    truncated at the box edges and renormalised."""
    scale = length.to(torch.float32)[:, None, None] / size
    half = 2.0 if mode == "bicubic" else 1.0
    support = torch.where(scale >= 1, half * scale, torch.full_like(scale, half))
    inv = torch.where(scale >= 1, 1.0 / scale, torch.ones_like(scale))
    i = torch.arange(size, device=length.device, dtype=torch.float32)[None, :, None]
    center = scale * (i + 0.5)
    xmin = torch.trunc(center - support + 0.5).clamp(min=0)
    xmax = torch.minimum(torch.trunc(center + support + 0.5), length.to(torch.float32)[:, None, None])
    k_max = int(math.ceil(2 * float(support.max()))) + 2
    pos = xmin + torch.arange(k_max, device=length.device, dtype=torch.float32)
    d = (pos - center + 0.5) * inv
    w = _cubic(d, -0.5) if mode == "bicubic" else (1 - d.abs()).clamp(min=0.0)
    w = torch.where(pos < xmax, w, torch.zeros_like(w))
    w = w / w.sum(dim=-1, keepdim=True)
    return torch.minimum(pos.long(), (length - 1)[:, None, None]), w


def weight_matrix(
    length: torch.Tensor, offset: torch.Tensor, window: int, size: int, mode: str, antialias: torch.Tensor
) -> torch.Tensor:
    """(n, size, window) weights resampling n boxes of `length` pixels starting at `offset` in a
    window of `window` pixels to `size` pixels; `antialias` (n,) bool picks the kernel per crop."""
    if mode not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {mode!r}")
    n = length.shape[0]
    out = torch.zeros(n, size, window, device=length.device)
    idx, w = _plain_taps(length, size, mode)
    use_aa = antialias & (mode != "nearest")
    plain = ~use_aa
    out.scatter_add_(2, idx + offset[:, None, None], w * plain[:, None, None])
    if bool(use_aa.any()):
        idx, w = _antialias_taps(length, size, mode)
        out.scatter_add_(2, idx + offset[:, None, None], w * use_aa[:, None, None])
    return out


def _weights_and_span(
    length: torch.Tensor, size: int, mode: str, antialias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`weight_matrix` for boxes at offset 0 (window: the longest box) and, each (n, size), the first
    and last source pixel row i may weight (taps are sorted, so no reduction is needed)."""
    n = length.shape[0]
    out = torch.zeros(n, size, int(length.max()), device=length.device)
    idx, w = _plain_taps(length, size, mode)
    use_aa = antialias & (mode != "nearest")
    out.scatter_add_(2, idx, w * (~use_aa)[:, None, None])
    first, last = idx[..., 0], idx[..., -1]
    if bool(use_aa.any()):
        idx, w = _antialias_taps(length, size, mode)
        out.scatter_add_(2, idx, w * use_aa[:, None, None])
        on = use_aa[:, None]
        first = torch.where(on, torch.minimum(first, idx[..., 0]), first)
        last = torch.where(on, torch.maximum(last, idx[..., -1]), last)
    return out, first, last


def _block_bands(first: torch.Tensor, last: torch.Tensor, block: int) -> tuple[list, list]:
    """Column range [lo, hi) of each block of `block` rows, for the rows in order and reversed:
    two (n, blocks) nested lists of (lo, hi)."""
    n, s = first.shape
    pad = -s % block
    out = []
    for f, la in ((first, last), (first.flip(1), last.flip(1))):
        f = torch.cat([f, f[:, -1:].expand(n, pad)], 1) if pad else f
        la = torch.cat([la, la[:, -1:].expand(n, pad)], 1) if pad else la
        lo = f.view(n, -1, block).amin(-1).tolist()
        hi = (la.view(n, -1, block).amax(-1) + 1).tolist()
        out.append([list(zip(a, b)) for a, b in zip(lo, hi)])
    return out[0], out[1]


def _banded_left(
    a: torch.Tensor, x: torch.Tensor, bands: list[tuple[int, int]], block: int, out: torch.Tensor
) -> None:
    """out = a @ x for banded (S, L) `a` and (C, L, M) `x`, one small product per block of rows."""
    for j, (lo, hi) in enumerate(bands):
        rows = slice(j * block, (j + 1) * block)
        torch.matmul(a[rows, lo:hi], x[:, lo:hi], out=out[:, rows])


def _block(size: int) -> int:
    """Rows per banded block: a few blocks per crop (one block up to 48 px)."""
    return size if size <= 48 else -(-size // max(2, round(size / 56)))


def _resample_each(x, image, boxes, size, interpolation, antialias, parts=None) -> torch.Tensor:
    """CPU: two banded left products per crop straight on its box (a view, no window copy):
    ``crop = A @ (B @ box'^T)^T`` (``box'`` the box or its transpose), with the symmetry
    `parts[n]` (transpose, flip rows, flip columns of the crop) folded in by swapping the height and
    width weights, transposing the box view and reversing weight rows (exact: no gather pass)."""
    top, left, bh, bw = boxes.unbind(-1)
    shrink = ((bh > size) | (bw > size)) & antialias
    weights, bands, block = [], [], _block(size)
    for length in (bh, bw):
        w, first, last = _weights_and_span(length, size, interpolation, shrink)
        weights.append(w)
        bands.append(_block_bands(first, last, block))
    (wy, wx), ((by, by_rev), (bx, bx_rev)) = weights, bands
    n_crops, c = len(boxes), x.shape[1]
    flags = [(False, False, False)] * n_crops if parts is None else [tuple(p) for p in parts.tolist()]
    out = torch.empty(n_crops, c, size, size)
    tmp = torch.empty(c, size, max(int(bh.max()), int(bw.max())))
    rows = zip(image.tolist(), *(v.tolist() for v in (top, left, bh, bw)), flags)
    for n, (i, y0, x0, h, w, (tr, fr, fc)) in enumerate(rows):
        box = x[i, :, y0 : y0 + h, x0 : x0 + w]
        # crop = A box' B^T; box' = box (A: height weights) or box^T (A: width weights)
        (a, la, ba, ra), (b, lb, bb, rb) = (wx, w, bx, bx_rev), (wy, h, by, by_rev)
        if not tr:
            (a, la, ba, ra), (b, lb, bb, rb) = (b, lb, bb, rb), (a, la, ba, ra)
        a, bands_a = (a[n, :, :la].flip(0), ra[n]) if fr else (a[n, :, :la], ba[n])
        b, bands_b = (b[n, :, :lb].flip(0), rb[n]) if fc else (b[n, :, :lb], bb[n])
        xt = box if tr else box.mT  # box'^T
        t_n = tmp[:, :, :la]
        _banded_left(b, xt, bands_b, block, t_n)
        _banded_left(a, t_n.mT, bands_a, block, out[n])
    return out


def _resample_group(x, image, boxes, size, interpolation, antialias) -> torch.Tensor:
    """Accelerators: every crop of the group reads a window of the group's largest box (one gather)
    and the group resamples in two batched matrix products."""
    _, c, hgt, wid = x.shape
    top, left, bh, bw = boxes.unbind(-1)
    win_h, win_w = int(bh.max()), int(bw.max())
    y0 = torch.minimum(top, torch.full_like(top, hgt - win_h))
    x0 = torch.minimum(left, torch.full_like(left, wid - win_w))
    ar = torch.arange
    rows = (y0[:, None] + ar(win_h, device=x.device))[:, None, :, None]
    cols = (x0[:, None] + ar(win_w, device=x.device))[:, None, None, :]
    window = x[image[:, None, None, None], ar(c, device=x.device)[None, :, None, None], rows, cols]
    shrink = ((bh > size) | (bw > size)) & antialias
    wy = weight_matrix(bh, top - y0, win_h, size, interpolation, shrink)
    wx = weight_matrix(bw, left - x0, win_w, size, interpolation, shrink)
    # contract the window's width first (n, C, win_h, size), then its height
    t = torch.matmul(window, wx.transpose(1, 2)[:, None])
    return torch.matmul(wy[:, None], t)


def resample_boxes(
    x: torch.Tensor,
    image: torch.Tensor,
    boxes: torch.Tensor,
    size: int,
    interpolation: str = "bicubic",
    antialias: bool = True,
    groups: int = 4,
    parts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Resized crops of float `x` (B, C, H, W): crop n is box ``boxes[n] = (top, left, h, w)`` of
    image ``image[n]`` resampled to (size, size); returns (n, C, size, size) float32.

    Antialiasing applies to a crop when its box is larger than `size` on either side (as in
    `resized_crop`). On CPU each crop is resampled from its own box; elsewhere in up to `groups`
    batched groups of similar box size, each crop reading a window of its group's largest box.
    """
    if x.device.type == "cpu":
        return _resample_each(x, image, boxes, size, interpolation, antialias, parts)
    if parts is not None:
        return apply_parts(resample_boxes(x, image, boxes, size, interpolation, antialias, groups), parts)
    n = boxes.shape[0]
    groups = max(1, min(groups, n // 8))
    if groups == 1:
        return _resample_group(x, image, boxes, size, interpolation, antialias)
    order = (boxes[:, 2] * boxes[:, 3]).argsort()
    out = torch.empty(n, x.shape[1], size, size, device=x.device)
    for part in order.tensor_split(groups):
        out[part] = _resample_group(x, image[part], boxes[part], size, interpolation, antialias)
    return out


def apply_parts(y: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
    """Crop n of square (n, C, S, S) transposed, then its rows and its columns reversed, as
    `parts[n]` (transpose, flip rows, flip columns) says."""
    t, fr, fc = (p[:, None, None, None] for p in parts.unbind(-1))
    y = torch.where(t, y.mT, y)
    y = torch.where(fr, y.flip(-2), y)
    return torch.where(fc, y.flip(-1), y)


def blur_matrices(sigma: torch.Tensor, size: int) -> tuple[torch.Tensor, int]:
    """(n, size, size) matrices ``G`` with ``G @ row`` = `gaussian_blur`'s 1-D pass (its kernels, its
    radius from the largest sigma, reflect padding or replicate when the radius reaches the size),
    and that radius."""
    radius = max(1, int(math.ceil(3.0 * float(sigma.max()))))
    k = gaussian_kernels(sigma, radius)  # (n, K)
    src = torch.arange(size, device=sigma.device)[:, None] + torch.arange(
        -radius, radius + 1, device=sigma.device
    )
    if radius < size:  # reflect without repeating the edge pixel, as F.pad(mode="reflect")
        src = torch.where(src < 0, -src, torch.where(src > size - 1, 2 * (size - 1) - src, src))
    else:
        src = src.clamp(0, size - 1)
    g = torch.zeros(len(sigma), size, size, device=sigma.device)
    g.scatter_add_(2, src.expand(len(sigma), -1, -1), k[:, None, :].expand(-1, size, -1).contiguous())
    return g, radius


def blur_square(y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """`gaussian_blur` of square crops (n, C, S, S) on CPU as two banded products per crop,
    ``G @ y @ G^T`` (several times faster than the depthwise convolutions there)."""
    n, c, s, _ = y.shape
    g, radius = blur_matrices(sigma, s)
    block = s if s <= 128 else _block(s)  # small crops: one product over the whole crop is faster
    bands = [(max(0, j - radius), min(s, j + block + radius)) for j in range(0, s, block)]
    out = torch.empty_like(y)
    tmp = torch.empty(c, s, s)
    for i in range(n):
        _banded_left(g[i], y[i].mT, bands, block, tmp)  # (y G^T)^T
        _banded_left(g[i], tmp.mT, bands, block, out[i])
    return out
