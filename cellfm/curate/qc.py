"""Quality control of fields / tiles: foreground fraction, contrast, focus, saturation, NaN / constant."""

from __future__ import annotations

import numpy as np

from .config import QCThresholds

MEASURES = ("foreground", "contrast", "snr", "focus", "saturated", "std")


def _scaled(plane: np.ndarray) -> np.ndarray:
    """A (H, W) plane scaled to [0, 1] by its 0.1-99.9th percentiles."""
    lo, hi = np.percentile(plane, [0.1, 99.9])
    return np.clip((plane - lo) / max(hi - lo, 1e-12), 0, 1)


def focus_measure(plane: np.ndarray) -> float:
    """Variance of the Laplacian relative to the variance of the percentile-scaled plane: the share of the
    signal at the finest scale, independent of brightness and of how much of the field is covered."""
    from scipy import ndimage

    s = _scaled(plane)
    var = float(s.var())
    return float(ndimage.laplace(s).var()) / var if var > 0 else 0.0


def measure(window: np.ndarray) -> dict[str, float]:
    """QC measures of one (C, h, w) window. A window is in focus / has foreground if any channel has;
    saturation is the worst channel's. `contrast` (std of the smoothed plane, raw units) is judged
    against the collection's median by `reasons`, `snr` (contrast / pixel-noise sigma) absolutely: pure
    noise of any amplitude has an snr of about 0.2."""
    from scipy import ndimage

    from cellfm.data.sampler import otsu_threshold

    arr = np.asarray(window)
    nan = float("nan")
    if arr.size == 0 or (arr.dtype.kind == "f" and not np.isfinite(arr).all()):
        return {"foreground": 0.0, "contrast": 0.0, "snr": 0.0, "focus": 0.0, "saturated": 0.0, "std": nan}
    top = float(np.iinfo(arr.dtype).max) if arr.dtype.kind in "ui" else None
    out = dict.fromkeys(MEASURES, 0.0)
    for plane in arr.astype(np.float64):
        out["std"] = max(out["std"], float(plane.std()))
        if plane.max() <= plane.min():
            continue
        ceiling = top if top is not None else float(plane.max())
        out["saturated"] = max(out["saturated"], float((plane >= ceiling).mean()) if top is not None else 0.0)
        s = _scaled(plane)
        out["foreground"] = max(out["foreground"], float((s > otsu_threshold(s)).mean()))
        contrast = float(ndimage.gaussian_filter(plane, 2.0).std())
        resid = plane - ndimage.gaussian_filter(plane, 1.0)
        noise = float(np.median(np.abs(resid - np.median(resid)))) / 0.6745  # robust pixel-noise sigma
        out["contrast"] = max(out["contrast"], contrast)
        out["snr"] = max(out["snr"], contrast / max(noise, 1e-12))
        out["focus"] = max(out["focus"], focus_measure(plane))
    return out


def reasons(measures: dict[str, np.ndarray], t: QCThresholds) -> np.ndarray:
    """'ok' or the first failing check for every row, in the order invalid, saturated, empty, out_of_focus."""
    m = {k: np.asarray(v, dtype=np.float64) for k, v in measures.items()}
    n = len(m["std"])
    out = np.full(n, "ok", dtype=object)
    invalid = ~np.isfinite(m["std"]) | (m["std"] <= t.min_std)
    valid_contrast = m["contrast"][~invalid]
    ref = float(np.median(valid_contrast)) if len(valid_contrast) else 0.0
    empty = (
        (m["foreground"] < t.min_foreground) | (m["contrast"] < t.min_contrast * ref) | (m["snr"] < t.min_snr)
    )
    checks = [("out_of_focus", m["focus"] < t.min_focus), ("empty", empty),
              ("saturated", m["saturated"] > t.max_saturated), ("invalid", invalid)]  # fmt: skip
    for name, bad in checks:  # last assignment wins: invalid > saturated > empty > out_of_focus
        out[bad] = name
    return out
