"""Every store cellfm writes validates with ome-zarr-models and reads back in ome-zarr-py (labels as
labels): the demo plate and converted plates, with the source's pixel size and data-derived windows."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from skimage import data as skdata

from cellfm.cli import main
from cellfm.data import list_fields
from cellfm.data.samples import otsu_objects, write_sample_plate
from tests.ome_validation import read_with_ome_zarr, validate_store

PATTERN = r"(?P<well>[A-H]\d\d)_s(?P<field>\d+)_(?P<channel>DAPI|GFP)\.ome\.tif"
LABELS = r"(?P<well>[A-H]\d\d)_s(?P<field>\d+)_mask\.tif"


def make_ome_tiffs(folder, pixel=0.325):
    """2 wells x 2 fields of DAPI / GFP OME-TIFFs (PhysicalSizeX/Y = `pixel` um) and a mask per field."""
    folder.mkdir()
    cells = skdata.cell().astype(np.uint16)  # (660, 550) real microscopy, peaks well below 65535
    for w, well in enumerate(["A01", "B03"]):
        for f in range(2):
            crop = cells[100 * w : 100 * w + 192, 150 * f : 150 * f + 160]
            meta = {"axes": "YX", "PhysicalSizeX": pixel, "PhysicalSizeY": pixel}
            tifffile.imwrite(folder / f"{well}_s{f}_DAPI.ome.tif", crop, ome=True, metadata=meta)
            tifffile.imwrite(folder / f"{well}_s{f}_GFP.ome.tif", crop // 2 + 3, ome=True, metadata=meta)
            tifffile.imwrite(folder / f"{well}_s{f}_mask.tif", otsu_objects(crop, min_size=10))
    return folder


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_converted_plate_validates_with_labels_pixel_size_and_windows(tmp_path, version, capsys):
    folder = make_ome_tiffs(tmp_path / "tiffs")
    out = str(tmp_path / "screen1.ome.zarr")
    argv = ["convert", str(folder), "-o", out, "--pattern", PATTERN, "--labels-pattern", LABELS,
            "--labels-name", "nuclei", "--ngff-version", version, "--chunk", "64", "--min-level-size", "48"]  # fmt: skip
    assert main(argv) == 0
    assert "0.325 um/pixel" in capsys.readouterr().out
    counts = validate_store(out)
    assert counts == {"version": version, "wells": 2, "images": 4, "labels": 4}

    from ome_zarr.reader import Label, Multiscales, Plate

    nodes = read_with_ome_zarr(out)
    assert isinstance(nodes[0].specs[0], Plate) and nodes[0].data[0].shape[-2:] == (
        2 * 192,
        2 * 160,
    )  # 2 rows x 2 columns, first field
    field = read_with_ome_zarr(f"{out}/B/3/1")
    kinds = {type(s).__name__ for node in field for s in node.specs}
    assert {"Multiscales", "Label"} <= kinds
    label = next(n for n in field if any(isinstance(s, Label) for s in n.specs))
    image = next(n for n in field if any(isinstance(s, Multiscales) for s in n.specs) and n is not label)
    assert len(label.data) == len(image.data)  # one label level per image level
    truth = otsu_objects(tifffile.imread(folder / "B03_s1_DAPI.ome.tif"), min_size=10)
    np.testing.assert_array_equal(np.asarray(label.data[0])[0, 0, 0], truth)
    scale = image.metadata["coordinateTransformations"][0][0]["scale"]
    assert scale[-2:] == [0.325, 0.325]
    assert image.metadata["channel_names"] == ["DAPI", "GFP"]
    (lo, hi), _ = image.metadata["contrast_limits"]
    assert hi <= tifffile.imread(folder / "B03_s1_DAPI.ome.tif").max() and hi > lo
    fields = list_fields(out)
    assert fields[0].plate == "screen1" and fields[0].labels_image("nuclei").read_full().max() > 0


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_demo_plate_validates_and_opens_in_ome_zarr_py(tmp_path, version):
    out = write_sample_plate(tmp_path / "demo.ome.zarr", version, timelapse_frames=1)
    counts = validate_store(out)
    assert counts["wells"] == counts["images"] == counts["labels"] == 3
    nodes = read_with_ome_zarr(out)
    assert nodes[0].data[0].shape[-2:] == (511, 3 * 511)  # fields share one shape: the plate stitches
    ((lo, hi),) = nodes[0].metadata["contrast_limits"]
    assert hi < 1000  # the first field (stardist nuclei) peaks at 235; the window follows the data


def test_validation_catches_a_plain_image_written_as_labels(tmp_path):
    """The check the issue asked for can fail: labels written as an image (old behaviour) are rejected."""
    from cellfm.data.writer import create_plate, with_version, write_image

    root = create_plate(str(tmp_path / "p.ome.zarr"), "p", {"A/1": ["0"]}, "0.4")
    field = root["A/1"].require_group("0")
    write_image(field, np.ones((1, 64, 64), np.uint16), ["DNA"], "0.4", min_level_size=64)
    group = field.require_group("labels")
    group.attrs.update(with_version("0.4", {"labels": ["cells"]}))
    write_image(
        group.require_group("cells"), np.ones((1, 64, 64), np.uint32), ["cells"], "0.4", min_level_size=64
    )
    with pytest.raises(Exception, match="image-label"):
        validate_store(str(tmp_path / "p.ome.zarr"))
