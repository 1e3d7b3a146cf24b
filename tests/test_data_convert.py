"""TIFF -> OME-Zarr plate conversion: regex / CSV mapping, pyramid, ome-zarr-py reader, resume, CLI."""

import json

import numpy as np
import pytest
import tifffile
from skimage import data as skdata

from cellfm.cli import main
from cellfm.data import convert_plate, list_fields
from cellfm.data.convert import MARKER
from cellfm.data.tiff_ingest import expand_inputs, normalise_well, records_from_csv, records_from_pattern

PATTERN = r"(?P<well>[A-H]\d\d)_s(?P<field>\d+)_w(?P<channel>\d)"
CHANNELS = ["hematoxylin", "dab", "eosin"]
ORDER = ["1", "2", "3"]  # the w<channel> tokens of the file names


@pytest.fixture
def tiff_folder(tmp_path):
    """2 wells x 2 fields x 3 channel TIFFs cut from scikit-image's immunohistochemistry image."""
    rgb = skdata.immunohistochemistry()  # (512, 512, 3) uint8, real microscopy
    folder = tmp_path / "tiffs"
    folder.mkdir()
    truth = {}
    for w, well in enumerate(["B02", "A01"]):
        for f in range(2):
            y, x = 200 * w, 150 * f
            field = (rgb[y : y + 300, x : x + 340].astype(np.uint16) * (f + 1)).transpose(2, 0, 1)
            truth[(normalise_well(well), str(f))] = field
            for c in range(3):
                tifffile.imwrite(folder / f"{well}_s{f}_w{c + 1}.tif", field[c])
    (folder / "notes.txt").write_text("ignored")
    return folder, truth


def _check(out, truth):
    fields = {(im.well, im.field): im for im in list_fields(out)}
    assert len(fields) == len(truth)
    for (well, fld), arr in truth.items():
        im = fields[(well.replace("/", ""), fld)]
        assert im.channel_names == CHANNELS
        np.testing.assert_array_equal(im.read_full(), arr)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_convert_regex_opens_with_ome_zarr_reader(tmp_path, tiff_folder, version):
    folder, truth = tiff_folder
    out = str(tmp_path / f"plate{version}.ome.zarr")
    records = records_from_pattern(expand_inputs([str(folder)]), PATTERN)
    report = convert_plate(
        records,
        out,
        channel_order=ORDER,
        channel_names=CHANNELS,
        version=version,
        chunk=64,
        min_level_size=64,
    )
    assert sorted(report.written) == ["A/1/0", "A/1/1", "B/2/0", "B/2/1"]
    _check(out, truth)
    im = list_fields(out)[0]
    assert im.levels == ["0", "1", "2"] and im.level_shape(2) == (3, 75, 85)
    assert im.chunks_yx == (64, 64) and im.array().chunks[1] == 3  # all channels in one chunk
    assert np.abs(im.read_full(1).astype(float) - truth[("A/1", "0")][:, :300:2, :340:2]).mean() < 20

    from ome_zarr.io import parse_url
    from ome_zarr.reader import Plate, Reader

    nodes = list(Reader(parse_url(out))())
    assert any(isinstance(s, Plate) for s in nodes[0].specs)
    field = list(Reader(parse_url(f"{out}/B/2/1"))())[0]
    assert field.metadata["channel_names"] == CHANNELS
    np.testing.assert_array_equal(np.asarray(field.data[0])[0, :, 0], truth[("B/2", "1")])


def test_convert_resumes_after_interruption(tmp_path, tiff_folder):
    folder, truth = tiff_folder
    out = str(tmp_path / "plate.ome.zarr")
    records = records_from_pattern(expand_inputs([str(folder)]), PATTERN)
    done = []

    def crash_after_two(key):
        done.append(key)
        if len(done) == 2:
            raise RuntimeError("simulated interruption")

    with pytest.raises(RuntimeError, match="simulated"):
        convert_plate(
            records, out, channel_order=ORDER, channel_names=CHANNELS, chunk=64, on_field_done=crash_after_two
        )
    # A third field was half-written: arrays present, no marker.
    (tmp_path / "plate.ome.zarr" / "B" / "2" / "0").mkdir(parents=True, exist_ok=True)
    marker_times = {k: (tmp_path / "plate.ome.zarr" / k / MARKER).stat().st_mtime_ns for k in done}
    again = convert_plate(records, out, channel_order=ORDER, channel_names=CHANNELS, chunk=64)
    assert sorted(again.skipped) == sorted(done) and len(again.written) == 2
    assert set(again.written).isdisjoint(done)
    assert {k: (tmp_path / "plate.ome.zarr" / k / MARKER).stat().st_mtime_ns for k in done} == marker_times
    _check(out, truth)
    assert len(list_fields(out)) == 4  # no duplicated fields in the metadata
    third = convert_plate(records, out, channel_order=ORDER, channel_names=CHANNELS, chunk=64)
    assert third.written == [] and len(third.skipped) == 4
    with pytest.raises(ValueError, match="channels"):
        convert_plate(records, out, channel_order=ORDER, channel_names=["a", "b", "c"], chunk=64)


def test_convert_csv_manifest_multichannel_ome_tiff(tmp_path):
    cell = skdata.cell()  # (660, 550) uint8
    stack = np.stack([cell, 255 - cell])
    rows = ["path,well,field"]
    for i, well in enumerate(["C3", "C4"]):
        name = f"img{i}.ome.tif"
        tifffile.imwrite(
            tmp_path / name, stack, ome=True, metadata={"axes": "CYX", "Channel": {"Name": ["bf", "inv"]}}
        )
        rows.append(f"{name},{well},{i}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    out = str(tmp_path / "m.ome.zarr")
    convert_plate(records_from_csv(str(tmp_path / "manifest.csv")), out, version="0.5", chunk=128)
    fields = list_fields(out)
    assert [(f.well, f.field) for f in fields] == [("C3", "0"), ("C4", "1")]
    assert fields[1].channel_names == ["bf", "inv"]
    np.testing.assert_array_equal(fields[1].read(100, 50, 64, 64), stack[:, 100:164, 50:114])


def test_convert_bad_inputs(tmp_path, tiff_folder):
    folder, _ = tiff_folder
    files = expand_inputs([str(folder)])
    with pytest.raises(ValueError, match="do not match pattern"):
        records_from_pattern(files, r"(?P<well>Z\d\d)")
    with pytest.raises(ValueError, match="needs a named group 'well'"):
        records_from_pattern(files, r"(?P<field>\d)")
    (folder / "A01_s0_w1.tif").unlink()
    with pytest.raises(ValueError, match="well A/1 field 0 has channels"):
        convert_plate(
            records_from_pattern(expand_inputs([str(folder)]), PATTERN), str(tmp_path / "x.ome.zarr")
        )
    (tmp_path / "bad.csv").write_text("file,well\na.tif,A1\n")
    with pytest.raises(ValueError, match="needs columns 'path'"):
        records_from_csv(str(tmp_path / "bad.csv"))
    tifffile.imwrite(folder / "A01_s0_w1.tif", np.ones((300, 340), dtype=np.complex64))
    with pytest.raises(ValueError, match="A01_s0_w1.tif.*unsupported dtype"):
        convert_plate(
            records_from_pattern(expand_inputs([str(folder)]), PATTERN), str(tmp_path / "y.ome.zarr")
        )


def test_cli_convert_stats_and_inspect(tmp_path, tiff_folder, capsys):
    folder, truth = tiff_folder
    out = str(tmp_path / "cli.ome.zarr")
    argv = ["convert", str(folder), "-o", out, "--pattern", PATTERN, "--channel-order", "1,2,3", "--channel-names", ",".join(CHANNELS),
            "--chunk", "64", "--stats"]  # fmt: skip
    assert main(argv) == 0
    assert "wrote 4 fields" in capsys.readouterr().out
    assert main(["inspect", out, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["kind"] == "plate" and d["n_fields"] == 4 and d["wells"] == {"A1": ["0", "1"], "B2": ["0", "1"]}
    assert d["first_field"]["channels"] == CHANNELS and d["first_field"]["levels"][0]["shape"] == [
        1,
        3,
        1,
        300,
        340,
    ]
    assert d["cellfm_channel_stats"]["channels"] == CHANNELS
    assert main(["inspect", out]) == 0
    assert "level '0': shape [1, 3, 1, 300, 340]" in capsys.readouterr().out
    assert main(["inspect", str(folder)]) == 1
    err = capsys.readouterr().err
    assert "no Zarr group or array" in err and "B02_s0_w1.tif" in err
