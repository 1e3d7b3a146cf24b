"""`cellfm convert` options that decide what the pixels are called: channel order and names, plate name,
bad patterns (one-line errors)."""

import numpy as np
import pytest
import tifffile

from cellfm.cli import main
from cellfm.data import list_fields
from cellfm.data.tiff_ingest import channel_plan, natural_key

PATTERN = r"(?P<well>[A-H]\d\d)_s(?P<field>\d+)_(?P<channel>[A-Za-z0-9]+)\.tif"


@pytest.fixture
def named_channels(tmp_path):
    """One field whose channel files are named DAPI and Actin; DAPI is bright (200), Actin dim (7)."""
    folder = tmp_path / "tiffs"
    folder.mkdir()
    tifffile.imwrite(folder / "A01_s1_DAPI.tif", np.full((32, 40), 200, np.uint16))
    tifffile.imwrite(folder / "A01_s1_Actin.tif", np.full((32, 40), 7, np.uint16))
    return folder


def _by_label(out):
    image = list_fields(out)[0]
    data = image.read_full()
    return {name: int(data[i].max()) for i, name in enumerate(image.channel_names)}, image


def test_channel_names_are_matched_by_name_and_never_mislabel(tmp_path, named_channels, capsys):
    out = str(tmp_path / "x.ome.zarr")
    # the example: names in the "wrong" order relabel nothing, they reorder the channels
    assert main(["convert", str(named_channels), "-o", out, "--pattern", PATTERN,
                 "--channel-names", "Actin,DAPI"]) == 0  # fmt: skip
    labelled, image = _by_label(out)
    assert labelled == {"Actin": 7, "DAPI": 200} and image.channel_names == ["Actin", "DAPI"]
    out2 = str(tmp_path / "y.ome.zarr")
    assert main(["convert", str(named_channels), "-o", out2, "--pattern", PATTERN,
                 "--channel-order", "DAPI,Actin", "--channel-names", "nuclei,actin"]) == 0  # fmt: skip
    labelled, image = _by_label(out2)
    assert labelled == {"nuclei": 200, "actin": 7} and image.channel_names == ["nuclei", "actin"]
    capsys.readouterr()
    assert main(["convert", str(named_channels), "-o", str(tmp_path / "z.ome.zarr"), "--pattern", PATTERN,
                 "--channel-names", "Tubulin,DAPI"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "['Tubulin']" in err and "--channel-order" in err and len(err.strip().splitlines()) == 1


def test_channel_plan_rules():
    assert channel_plan(["w1", "w2", "w10"]) == (["w1", "w2", "w10"], ["w1", "w2", "w10"])
    assert channel_plan(["w1", "w2"], names=["w2=Actin", "w1=DAPI"]) == (["w2", "w1"], ["Actin", "DAPI"])
    assert channel_plan(["w1", "w2"], ["w2", "w1"], ["Actin", "DAPI"]) == (["w2", "w1"], ["Actin", "DAPI"])
    with pytest.raises(ValueError, match="unknown \\['w3'\\]"):
        channel_plan(["w1", "w2"], ["w1", "w3"])
    with pytest.raises(ValueError, match="missing \\['w2'\\]"):
        channel_plan(["w1", "w2"], ["w1"])
    with pytest.raises(ValueError, match="2 channel names"):
        channel_plan(["w1", "w2", "w3"], ["w1", "w2", "w3"], ["a", "b"])
    with pytest.raises(ValueError, match="TOKEN=LABEL"):
        channel_plan(["w1", "w2"], names=["w1=DAPI", "Actin"])
    assert sorted(["ch10", "ch2", "ch1"], key=natural_key) == ["ch1", "ch2", "ch10"]


def test_plate_name_defaults_to_output_stem_and_bad_regex_is_one_line(tmp_path, named_channels, capsys):
    out = tmp_path / "screen7_plate3.ome.zarr"
    assert main(["convert", str(named_channels), "-o", str(out), "--pattern", PATTERN]) == 0
    assert list_fields(str(out))[0].plate == "screen7_plate3"
    assert main(["convert", str(named_channels), "-o", str(tmp_path / "n.ome.zarr"), "--pattern", PATTERN,
                 "--plate-name", "P1"]) == 0  # fmt: skip
    assert list_fields(str(tmp_path / "n.ome.zarr"))[0].plate == "P1"
    capsys.readouterr()
    assert main(["convert", str(named_channels), "-o", str(tmp_path / "b.ome.zarr"),
                 "--pattern", r"(?P<well>[A-H]\d\d_(?P<field>\d+"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "is not a valid regular expression" in err and len(err.strip().splitlines()) == 1
