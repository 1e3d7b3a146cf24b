"""Stores cellfm writes open in napari-ome-zarr in a headless viewer: the demo plate (fields stitched,
contrast from the data) and a field's labels as a Labels layer."""

from __future__ import annotations

import ctypes.util
import os

if "QT_QPA_PLATFORM" not in os.environ:  # as in test_napari_plugin: xcb under Xvfb when it can load
    xcb = os.environ.get("DISPLAY") and ctypes.util.find_library("xcb-cursor")
    os.environ["QT_QPA_PLATFORM"] = "xcb" if xcb else "offscreen"

import pytest  # noqa: E402

from cellfm.data.samples import write_sample_plate  # noqa: E402


@pytest.fixture(scope="module")
def demo_plate(tmp_path_factory):
    return write_sample_plate(tmp_path_factory.mktemp("demo") / "demo.ome.zarr", "0.5", timelapse_frames=1)


def test_demo_plate_and_labels_open_in_napari_ome_zarr(make_napari_viewer, demo_plate):
    viewer = make_napari_viewer()
    layers = viewer.open(demo_plate, plugin="napari-ome-zarr")
    kinds = {layer.__class__.__name__: layer for layer in layers}
    assert set(kinds) == {"Image", "Labels"} and len(layers) == 2  # the plate's fields and their labels
    plate = kinds["Image"]
    assert plate.data[0].shape[-2:] == (511, 511 * 3)  # 3 wells in one row, one field each
    assert kinds["Labels"].data[0].shape[-2:] == (511, 511 * 3)
    lo, hi = plate.contrast_limits
    assert 0 < hi < 65535 / 2, plate.contrast_limits  # from the data, not the uint16 range
    viewer.layers.clear()
    layers = viewer.open(f"{demo_plate}/A/1/0", plugin="napari-ome-zarr")
    kinds = {layer.__class__.__name__: layer for layer in layers}
    assert set(kinds) == {"Image", "Labels"}
    labels = kinds["Labels"]
    assert labels.data[0].max() > 10 and list(labels.scale[-2:]) == list(kinds["Image"].scale[-2:])
    assert kinds["Image"].contrast_limits[1] < 1000  # stardist's nuclei peak at 235


def test_converted_plate_opens_in_napari_ome_zarr(make_napari_viewer, tmp_path):
    from cellfm.cli import main
    from tests.test_ome_zarr_interop import LABELS, PATTERN, make_ome_tiffs

    folder = make_ome_tiffs(tmp_path / "tiffs")
    out = str(tmp_path / "conv.ome.zarr")
    assert main(["convert", str(folder), "-o", out, "--pattern", PATTERN, "--labels-pattern", LABELS,
                 "--chunk", "64", "--min-level-size", "48"]) == 0  # fmt: skip
    viewer = make_napari_viewer()
    layers = viewer.open(out, plugin="napari-ome-zarr")
    names = sorted(layer.__class__.__name__ for layer in layers)
    assert names == ["Image", "Image", "Labels"]  # DAPI, GFP, and the cells labels
    for layer in layers:
        assert list(layer.scale[-2:]) == [0.325, 0.325]
        if layer.__class__.__name__ == "Image":
            assert layer.contrast_limits[1] <= 255, layer.contrast_limits  # data range, not 0-65535
