"""Reading OME-Zarr 0.4 / 0.5 images and plates, plain Zarr, TIFF, fsspec URLs; bad-input errors."""

import numpy as np
import pytest
import tifffile
import zarr

from cellfm.data import Image, describe, list_fields, store_kind
from cellfm.data.writer import create_plate, write_image

AXES_CYX = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]


def _ds(path, factor, n):
    return {
        "path": path,
        "coordinateTransformations": [{"type": "scale", "scale": [1.0] * (n - 2) + [factor] * 2}],
    }


def write_v04_cyx(path, data, names):
    """Hand-written NGFF 0.4 image: axes c, y, x; levels named 's0', 's1'."""
    g = zarr.open_group(str(path), mode="w", zarr_format=2)
    g.create_array("s0", data=data, chunks=(data.shape[0], 32, 32))
    g.create_array("s1", data=np.ascontiguousarray(data[:, ::2, ::2]), chunks=(data.shape[0], 32, 32))
    g.attrs.update({
        "multiscales": [{"version": "0.4", "axes": AXES_CYX, "datasets": [_ds("s0", 1, 3), _ds("s1", 2, 3)]}],
        "omero": {"channels": [{"label": n} for n in names]},
    })  # fmt: skip
    return g


def write_v05_zcyx(path, data_zcyx, names):
    """Hand-written NGFF 0.5 image: axes z, c, y, x; levels 'full', 'half'."""
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    g.create_array("full", data=data_zcyx, chunks=(1, data_zcyx.shape[1], 32, 32))
    g.create_array("half", data=np.ascontiguousarray(data_zcyx[:, :, ::2, ::2]), chunks=(1, 2, 16, 16))
    axes = [{"name": "z", "type": "space"}] + AXES_CYX
    g.attrs.update({"ome": {"version": "0.5", "multiscales": [
        {"axes": axes, "datasets": [_ds("full", 1, 4), _ds("half", 2, 4)]}],
        "omero": {"channels": [{"label": n} for n in names]}}})  # fmt: skip
    return g


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.integers(0, 60000, size=(3, 96, 80), dtype=np.uint16)


def test_ngff04_image_levels_axes_and_labels(tmp_path, data):
    write_v04_cyx(tmp_path / "img.zarr", data, ["DNA", "ER", "Mito"])
    assert store_kind(str(tmp_path / "img.zarr")) == "image"
    im = Image(str(tmp_path / "img.zarr"))
    assert im.levels == ["s0", "s1"] and im.axes == ("c", "y", "x")
    assert im.channel_names == ["DNA", "ER", "Mito"]
    np.testing.assert_array_equal(im.read(10, 7, 20, 30), data[:, 10:30, 7:37])
    coarse = Image(str(tmp_path / "img.zarr"), level="s1")
    assert coarse.shape == (3, 48, 40)
    np.testing.assert_array_equal(coarse.read_full(), data[:, ::2, ::2])
    with pytest.raises(KeyError, match="no level 's9'.*s0"):
        _ = Image(str(tmp_path / "img.zarr"), level="s9").shape


def test_ngff05_zcyx_selects_z_and_level(tmp_path, data):
    stack = np.stack([data[:2], data[1:] + 1])  # (z=2, c=2, y, x)
    write_v05_zcyx(tmp_path / "img.zarr", stack, ["a", "b"])
    im = Image(str(tmp_path / "img.zarr"), z=1)
    assert im.axes == ("z", "c", "y", "x") and im.shape == (2, 96, 80)
    np.testing.assert_array_equal(im.read(0, 0, 5, 6), stack[1, :, :5, :6])
    assert Image(str(tmp_path / "img.zarr"), level=1).shape == (2, 48, 40)
    d = describe(str(tmp_path / "img.zarr"))
    assert d["ngff_version"] == "0.5" and d["channels"] == ["a", "b"] and len(d["levels"]) == 2


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_plate_fields_and_missing_well(tmp_path, data, version):
    out = str(tmp_path / "p.ome.zarr")
    root = create_plate(out, "P1", {"A/1": ["0", "1"], "B/3": ["0"]}, version)
    for well, fld in [("A/1", "0"), ("A/1", "1"), ("B/3", "0")]:
        write_image(
            root[well].require_group(fld), data, ["x", "y", "z"], version, chunk=32, min_level_size=32
        )
    fields = list_fields(out)
    assert [(f.plate, f.well, f.field) for f in fields] == [
        ("P1", "A1", "0"),
        ("P1", "A1", "1"),
        ("P1", "B3", "0"),
    ]
    assert fields[2].levels == ["0", "1"] and fields[2].level_shape(1) == (3, 48, 40)
    np.testing.assert_array_equal(fields[1].read(3, 4, 10, 10), data[:, 3:13, 4:14])
    assert list_fields(out, wells=["B03"])[0].source.endswith("B/3/0")
    # A well listed in the metadata but absent from the store.
    meta = dict(root.attrs)
    block = meta["ome"]["plate"] if version == "0.5" else meta["plate"]
    block["wells"].append({"path": "C/5", "rowIndex": 2, "columnIndex": 2})
    root.attrs.update(meta)
    with pytest.raises(KeyError, match="C/5"):
        list_fields(out)
    assert len(list_fields(out, strict=False)) == 3
    with pytest.raises(KeyError, match="wells \\['Z9'\\]"):
        list_fields(out, wells=["Z9"])


def test_store_written_by_ome_zarr_package(tmp_path, data):
    from ome_zarr.io import parse_url
    from ome_zarr.writer import write_image as omz_write

    path = tmp_path / "omz.zarr"
    root = zarr.open_group(str(path), mode="w")
    omz_write(data, group=root, axes="cyx", storage_options={"chunks": (1, 32, 32)})
    root.attrs["omero"] = {"channels": [{"label": "p"}, {"label": "q"}, {"label": "r"}]}
    assert parse_url(str(path)) is not None
    im = Image(str(path))
    assert im.axes == ("c", "y", "x") and len(im.levels) >= 2
    np.testing.assert_array_equal(im.read(1, 2, 30, 40), data[:, 1:31, 2:42])


def test_plain_zarr_tiff_and_fsspec_url(tmp_path, data):
    zarr.create_array(str(tmp_path / "plain.zarr"), data=data, chunks=(1, 32, 32))
    assert store_kind(str(tmp_path / "plain.zarr")) == "array"
    np.testing.assert_array_equal(Image(str(tmp_path / "plain.zarr")).read(0, 0, 4, 4), data[:, :4, :4])
    tifffile.imwrite(
        tmp_path / "a.ome.tif", data, ome=True, metadata={"axes": "CYX", "Channel": {"Name": ["u", "v", "w"]}}
    )
    tif = Image(str(tmp_path / "a.ome.tif"))
    assert tif.channel_names == ["u", "v", "w"] and tif.shape == (3, 96, 80)
    np.testing.assert_array_equal(tif.read(5, 5, 9, 9), data[:, 5:14, 5:14])
    tifffile.imwrite(tmp_path / "gray.tif", data[0])
    assert Image(str(tmp_path / "gray.tif")).read(0, 0, 3, 3).shape == (1, 3, 3)
    url = "memory://cellfm-test-stores/img.zarr"
    write_v04_cyx(url, data, ["a", "b", "c"])
    np.testing.assert_array_equal(list_fields(url)[0].read(2, 2, 8, 8), data[:, 2:10, 2:10])
    np.testing.assert_array_equal(Image(f"file://{tmp_path}/plain.zarr").read(0, 0, 2, 2), data[:, :2, :2])


def test_bad_inputs_name_what_was_found(tmp_path, data):
    g = zarr.open_group(str(tmp_path / "notome.zarr"), mode="w")
    g.attrs["foo"] = 1
    g.create_array("raw", data=data)
    with pytest.raises(ValueError, match=r"not OME-Zarr.*\['foo'\].*\['raw'\]"):
        store_kind(str(tmp_path / "notome.zarr"))
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"folder.*readme.txt"):
        store_kind(str(tmp_path / "folder"))
    zarr.create_array(str(tmp_path / "cplx.zarr"), data=np.ones((2, 4, 4), dtype=np.complex64))
    with pytest.raises(ValueError, match="cplx.zarr.*unsupported dtype complex64"):
        _ = Image(str(tmp_path / "cplx.zarr")).dtype
    with pytest.raises(FileNotFoundError, match="nothere.zarr"):
        _ = Image(str(tmp_path / "nothere.zarr")).shape
