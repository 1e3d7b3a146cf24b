"""The offline training images: the stardist 3D mosaic, and nuclei.tif never among them."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("stardist")


def test_stardist_3d_mosaic_tiles_every_slice():
    from stardist.data import test_image_nuclei_3d

    from cellfm.data.samples import stardist_3d_mosaic

    vol = np.asarray(test_image_nuclei_3d(), dtype=np.uint16)
    m = stardist_3d_mosaic()
    assert m.shape == (512, 512) and m.dtype == np.uint16
    h, w = vol.shape[1:]
    np.testing.assert_array_equal(m[:h, :w], vol[0])
    np.testing.assert_array_equal(m[:h, w : 2 * w], vol[1])
    np.testing.assert_array_equal(
        m[3 * h : 4 * h, 7 * w : 8 * w], vol[0, :, ::-1]
    )  # tile 31: slice 0 mirrored


def test_training_images_never_hold_the_heldout_stack():
    from cellfm.data.samples import heldout_nuclei, training_images

    images = training_images(10, stardist_3d=True)
    assert "stardist_nuclei_3d_mosaic" in images and sum(k.startswith("timelapse") for k in images) == 10
    held = heldout_nuclei()[0]
    for name, img in images.items():
        for z in (0, 30, 59):
            s = held[z]
            if img.shape[0] >= s.shape[0] and img.shape[1] >= s.shape[1]:
                assert not np.array_equal(img[: s.shape[0], : s.shape[1]], s), name
