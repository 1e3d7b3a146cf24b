"""Copy-detection descriptors: what `cellfm curate` compares to find near-duplicate fields / tiles.

Two views of a window are combined (README "Curation", `benchmarks/copy_detection.py`):
- `image_descriptor`: the window low-passed and resampled to a small grid, z-scored per channel, so the
  cosine of two windows is the correlation of their coarse layouts. Blur and coarse cells make it
  tolerant to pixel noise, few-pixel shifts and a few percent of zoom; z-scoring makes it blind to
  intensity re-scaling. The ViT features of a small model are not shift invariant, this is.
- the model's patch features pooled on a grid (`dedup.pooled_descriptor`), which knows what is imaged.
`combine` stacks both, weighted, so that one inner product is the weighted mean of the two cosines:
the faiss search over it proposes candidate pairs. Each candidate is then confirmed or rejected by
`aligned_similarity`, the best correlation of band-pass thumbnails over small shifts (a geometric
check, as copy-detection pipelines verify their matches): smooth fields of one kind have similar coarse
layouts, only a true copy still matches in the finer band once aligned.
"""

from __future__ import annotations

import numpy as np

from .dedup import normalise

THUMBNAIL = 48  # alignment thumbnails are THUMBNAIL x THUMBNAIL pixels per zoom and channel (float16)
ZOOMS = (1.0, 1.05)  # each window is also compared zoomed by 5% against the other's full view
RADIUS_FRACTION = 0.1  # aligned_similarity searches shifts of up to 10% of the window each way


def image_descriptor(window: np.ndarray, size: int = 16, blur: float = 1.0) -> np.ndarray:
    """A (C, h, w) window as (C * size * size,): Gaussian low-pass (sigma `blur` output cells), area
    resampling to size x size, each channel z-scored (a flat channel stays zero)."""
    from scipy import ndimage

    arr = np.asarray(window, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"copy-detection window has shape {arr.shape}; expected a non-empty (C, h, w)")
    out = np.zeros((arr.shape[0], size, size), dtype=np.float32)
    for c, plane in enumerate(arr):
        plane = np.nan_to_num(plane)
        h, w = plane.shape
        sigma = (blur * h / size, blur * w / size)
        smooth = ndimage.gaussian_filter(plane, sigma, mode="reflect")
        ys = np.linspace(0, h, size + 1).round().astype(int)
        xs = np.linspace(0, w, size + 1).round().astype(int)
        rows = (
            np.add.reduceat(smooth, np.minimum(ys[:-1], h - 1), axis=0) / np.maximum(np.diff(ys), 1)[:, None]
        )
        cells = np.add.reduceat(rows, np.minimum(xs[:-1], w - 1), axis=1) / np.maximum(np.diff(xs), 1)[None]
        std = float(cells.std())
        if std > 1e-6 * max(float(np.abs(cells).mean()), 1e-12):
            out[c] = (cells - cells.mean()) / std
    return out.ravel()


def combine(image: np.ndarray, model: np.ndarray, image_weight: float) -> np.ndarray:
    """(n, d1 + d2) rows whose inner product is `image_weight` x the centred cosine of the image
    descriptors + (1 - `image_weight`) x that of the model descriptors (each centred on its collection
    mean, so that what every window shares, e.g. vignetting or the mean feature, does not count)."""
    if not 0 <= image_weight <= 1:
        raise ValueError(f"image_weight must be in [0, 1], got {image_weight}")
    if len(image) != len(model):
        raise ValueError(f"{len(image)} image descriptors but {len(model)} model descriptors")
    parts = []
    if image_weight > 0:
        parts.append(np.sqrt(image_weight) * normalise(image - image.mean(0)))
    if image_weight < 1:
        parts.append(np.sqrt(1 - image_weight) * normalise(model - model.mean(0)))
    return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)


def _central(plane: np.ndarray, zoom: float) -> np.ndarray:
    """The central 1/`zoom` of a plane (what a `zoom`-times magnified view of it shows)."""
    h, w = plane.shape
    ch, cw = max(1, round(h / zoom)), max(1, round(w / zoom))
    y, x = (h - ch) // 2, (w - cw) // 2
    return plane[y : y + ch, x : x + cw]


def alignment_thumbnails(window: np.ndarray, size: int = THUMBNAIL, fine: float = 1.0, coarse: float = 4.0,
                         zooms: tuple[float, ...] = ZOOMS) -> np.ndarray:  # fmt: skip
    """A (C, h, w) window as (len(zooms), C, size, size) float16 band-pass thumbnails for
    `aligned_similarity`, one per zoom (the central 1/zoom of the window): area-resampled, difference of
    Gaussians (sigmas `fine`, `coarse` thumbnail pixels: no pixel noise, no illumination gradient),
    Hann-windowed (no wrap-around edges), mean 0 and unit norm over the channels."""
    from scipy import ndimage
    from skimage.transform import resize

    arr = np.nan_to_num(np.asarray(window, dtype=np.float32))
    if arr.ndim != 3 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"copy-detection window has shape {arr.shape}; expected a non-empty (C, h, w)")
    hann = np.outer(np.hanning(size), np.hanning(size)).astype(np.float32)
    out = np.zeros((len(zooms), arr.shape[0], size, size), dtype=np.float32)
    for z, zoom in enumerate(zooms):
        for c, plane in enumerate(arr):
            small = resize(_central(plane, zoom), (size, size), anti_aliasing=True, preserve_range=True)
            band = ndimage.gaussian_filter(small, fine) - ndimage.gaussian_filter(small, coarse)
            out[z, c] = (band - band.mean()) * hann
        norm = float(np.linalg.norm(out[z]))
        out[z] /= max(norm, 1e-30)
    return out.astype(np.float16)


def _spectrum(thumbs: np.ndarray) -> np.ndarray:
    """The zero-padded 2-D FFT of a (Z, C, h, w) thumbnail stack (what `aligned_similarity` correlates)."""
    from scipy import fft

    h, w = thumbs.shape[-2:]
    return fft.rfft2(thumbs.astype(np.float32), s=(2 * h, 2 * w))


def _best_shift(fa: np.ndarray, fb: np.ndarray, h: int, w: int, radius: int) -> float:
    from scipy import fft

    pairs = [(0, 0)] + [(z, 0) for z in range(1, len(fa))] + [(0, z) for z in range(1, len(fb))]
    best = -1.0
    for za, zb in pairs:
        cc = fft.irfft2((fa[za] * np.conj(fb[zb])).sum(0), s=(2 * h, 2 * w))
        cc = np.roll(cc, (radius, radius), axis=(0, 1))[: 2 * radius + 1, : 2 * radius + 1]
        best = max(best, float(cc.max()))
    return best


def aligned_similarity(a: np.ndarray, b: np.ndarray, radius: int = 5) -> float:
    """The best correlation of two `alignment_thumbnails` stacks over shifts of up to `radius` thumbnail
    pixels each way (zero-padded FFT cross-correlation, summed over channels) and over either window
    zoomed against the other's full view: about 1 for a copy, shifted, zoomed or not."""
    h, w = a.shape[-2:]
    return _best_shift(_spectrum(a), _spectrum(b), h, w, radius)


class _Spectra:
    """FFTs of the thumbnails of the last `size` rows asked for (rows come in runs: a row and its
    neighbours), so that each is transformed about once."""

    def __init__(self, thumbs: np.ndarray, size: int = 256):
        self.thumbs, self.size, self.cache = thumbs, size, {}

    def __getitem__(self, i: int) -> np.ndarray:
        if i not in self.cache:
            if len(self.cache) >= self.size:
                self.cache.pop(next(iter(self.cache)))  # the oldest entry
            self.cache[i] = _spectrum(self.thumbs[i])
        return self.cache[i]


def copy_groups(image: np.ndarray, model: np.ndarray, thumbs: np.ndarray, cfg,
                counter: list[int] | None = None) -> tuple[np.ndarray, int]:  # fmt: skip
    """Duplicate groups (`dedup.duplicate_groups`): candidate pairs by the combined descriptors'
    cosine >= `cfg.candidate_threshold` among `cfg.neighbours` nearest neighbours (faiss), confirmed by
    `aligned_similarity` of their thumbnails >= `cfg.duplicate_threshold` (`counter[0]` counts checks)."""
    from .dedup import duplicate_groups

    radius = max(1, round(RADIUS_FRACTION * thumbs.shape[-1]))
    spectra, (h, w) = _Spectra(thumbs), thumbs.shape[-2:]

    def verify(i: int, j: int) -> bool:
        if counter is not None:
            counter[0] += 1
        return _best_shift(spectra[i], spectra[j], h, w, radius) >= cfg.duplicate_threshold

    return duplicate_groups(combine(image, model, cfg.image_weight), cfg.candidate_threshold, cfg.neighbours,
                            cfg.exact_max, verify=verify)  # fmt: skip
