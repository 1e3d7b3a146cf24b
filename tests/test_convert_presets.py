"""Instrument presets on tiny fake exports that follow each vendor's documented naming and metadata files:
wells, fields, channel names, pixel size and plate name come out right, and the plates validate."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import tifffile
import zarr

from cellfm.cli import main
from cellfm.data import list_fields
from tests.ome_validation import validate_store

SHAPE = (24, 32)


def pixels(well: str, field: int, channel: int) -> np.ndarray:
    """A field/channel image whose constant value encodes where it belongs."""
    value = 1000 * (ord(well[0]) - 64) + 100 * int(well[1:]) + 10 * field + channel
    return np.full(SHAPE, value, np.uint16) + np.arange(SHAPE[1], dtype=np.uint16)


FIELDS = [("A01", 1), ("A01", 2), ("B03", 1)]


def harmony_export(root, index_name):
    images = root / "Images"
    images.mkdir(parents=True)
    entries = []
    for well, field in FIELDS:
        r, c = ord(well[0]) - 64, int(well[1:])
        for ch in (1, 2):
            for plane in (1, 2):  # a z-stack: the first plane is converted unless --plane
                name = f"r{r:02d}c{c:02d}f{field:02d}p{plane:02d}-ch{ch}sk1fk1fl1.tiff"
                tifffile.imwrite(images / name, pixels(well, field, ch) + (plane - 1) * 7)
                entries.append(f"<Image Version=\"1\"><id>{r}{c}{field}{plane}{ch}</id><URL>{name}</URL><Row>{r}</Row>"
                               f"<Col>{c}</Col><FieldID>{field}</FieldID><PlaneID>{plane}</PlaneID><ChannelID>{ch}</ChannelID>"
                               + ("" if index_name == "Index.xml" else
                                  f"<ChannelName>{['HOECHST 33342', 'Alexa 488'][ch - 1]}</ChannelName>"
                                  '<ImageResolutionX Unit="m">2.9897E-07</ImageResolutionX>'
                                  '<ImageResolutionY Unit="m">2.9897E-07</ImageResolutionY>')
                               + "</Image>")  # fmt: skip
    maps = "".join(f'<Entry ChannelID="{ch}"><ChannelName>{n}</ChannelName><ImageResolutionX Unit="m">2.9897E-07'
                   '</ImageResolutionX><ImageResolutionY Unit="m">2.9897E-07</ImageResolutionY></Entry>'
                   for ch, n in ((1, "HOECHST 33342"), (2, "Alexa 488")))  # fmt: skip
    xml = ('<?xml version="1.0" encoding="utf-8"?><EvaluationInputData Version="2" '
           'xmlns="43B2A954-E3C3-47E1-B392-6635266B0DAF"><PlateID>P1</PlateID><Plates><Plate><PlateID>P1</PlateID>'
           "<Name>PhenixPlate1</Name><PlateRows>8</PlateRows><PlateColumns>12</PlateColumns></Plate></Plates>"
           f"<Images>{''.join(entries)}</Images>"
           + (f"<Maps><Map>{maps}</Map></Maps>" if index_name == "Index.xml" else "") + "</EvaluationInputData>")  # fmt: skip
    (images / index_name).write_text(xml)
    return images, ["HOECHST 33342", "Alexa 488"], 0.29897, "PhenixPlate1"


def metaxpress_export(root):
    folder = root / "Plate42" / "TimePoint_1"
    folder.mkdir(parents=True)
    names = ["DAPI", "FITC"]
    for well, field in FIELDS:
        for w in (1, 2):
            guid = str(uuid.UUID(int=hash((well, field, w)) % 2**128)).upper()
            desc = ('<MetaData><PlaneInfo><prop id="_IllumSetting_" type="string" value="{}"/>'
                    '<prop id="spatial-calibration-x" type="float" value="0.65"/>'
                    '<prop id="spatial-calibration-y" type="float" value="0.65"/>'
                    '<prop id="spatial-calibration-units" type="string" value="um"/></PlaneInfo></MetaData>')  # fmt: skip
            data = pixels(well, field, w)
            tifffile.imwrite(folder / f"Plate42_{well}_s{field}_w{w}{guid}.tif", data, description=desc.format(names[w - 1]),
                             software="MetaSeries")  # fmt: skip
            tifffile.imwrite(folder / f"Plate42_{well}_s{field}_w{w}_thumb{guid}.tif", data[::4, ::4])
    (root / "Plate42" / "Plate42.HTD").write_text(
        '"HTSInfoFile", Version 1.0\n"XWells", 12\n"YWells", 8\n"Sites", TRUE\n"Waves", TRUE\n"NWavelengths", 2\n'
        '"WaveName1", "DAPI"\n"WaveName2", "FITC"\n"EndFile"\n'
    )
    return root / "Plate42", names, 0.65, "Plate42"


def cellvoyager_export(root):
    root.mkdir()
    for well, field in FIELDS:
        for ch in (1, 2):
            for z in (1, 2):
                name = f"CVscreen_{well}_T0001F{field:03d}L01A01Z{z:02d}C{ch:02d}.tif"
                tifffile.imwrite(root / name, pixels(well, field, ch) + (z - 1) * 7)
    bts = 'xmlns:bts="http://www.yokogawa.co.jp/BTS/BTSSchema/1.0"'
    channels = "".join(f'<bts:MeasurementChannel bts:Ch="{c}" bts:HorizontalPixelDimension="0.325" '
                       f'bts:VerticalPixelDimension="0.325" bts:CameraNumber="1" />' for c in (1, 2))  # fmt: skip
    (root / "MeasurementDetail.mrf").write_text(
        f'<?xml version="1.0" encoding="utf-8"?><bts:MeasurementDetail bts:Version="1.0" '
        f'bts:MeasurementSettingFileName="assay.mes" bts:TargetSystem="CV8000" {bts}>'
        f'<bts:MeasurementSamplePlate bts:Name="CV-P1" bts:WellPlateFileName="CV-P1.wpi" />{channels}'
        "</bts:MeasurementDetail>"
    )
    (root / "assay.mes").write_text(
        f'<?xml version="1.0" encoding="utf-8"?><bts:MeasurementSetting {bts}><bts:ChannelList>'
        '<bts:Channel bts:Ch="1" bts:Target="DNA" /><bts:Channel bts:Ch="2" bts:Target="Actin" />'
        "</bts:ChannelList></bts:MeasurementSetting>"
    )
    return root, ["DNA", "Actin"], 0.325, "CV-P1"


EXPORTS = {
    "harmony-idx": ("harmony", lambda r: harmony_export(r, "Index.idx.xml")),
    "harmony-index": ("harmony", lambda r: harmony_export(r, "Index.xml")),
    "metaxpress": ("metaxpress", metaxpress_export),
    "cellvoyager": ("cellvoyager", cellvoyager_export),
}


@pytest.mark.parametrize("case", sorted(EXPORTS))
def test_preset_converts_a_vendor_export(tmp_path, case, capsys):
    preset, make = EXPORTS[case]
    folder, names, pixel, plate = make(tmp_path / "export")
    out = str(tmp_path / "out.ome.zarr")
    assert (
        main(
            ["convert", str(folder), "-o", out, "--preset", preset, "--chunk", "64", "--min-level-size", "16"]
        )
        == 0
    )
    assert f"{pixel:g} um/pixel" in capsys.readouterr().out
    assert validate_store(out)["images"] == 3
    fields = list_fields(out)
    assert sorted((f.well, f.field) for f in fields) == [("A1", "1"), ("A1", "2"), ("B3", "1")]
    for image in fields:
        assert image.channel_names == names and image.plate == plate
        well = f"{image.well[0]}{int(image.well[1:]):02d}"
        data = image.read_full()
        for c in range(2):  # each label sits on the pixels of its own channel, first plane
            np.testing.assert_array_equal(data[c], pixels(well, int(image.field), c + 1))
    scale = zarr.open_group(f"{out}/A/1/1", mode="r").attrs.asdict()
    scale = scale.get("ome", scale)["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale[-2:] == pytest.approx([pixel, pixel])


def test_preset_plane_choice_and_bad_names(tmp_path, capsys):
    folder, *_ = cellvoyager_export(tmp_path / "cv")
    out = str(tmp_path / "z2.ome.zarr")
    assert (
        main(["convert", str(folder), "-o", out, "--preset", "cellvoyager", "--plane", "2", "--chunk", "64"])
        == 0
    )
    image = next(f for f in list_fields(out) if f.well == "B3")
    np.testing.assert_array_equal(image.read_full()[1], pixels("B03", 1, 2) + 7)
    assert main(["convert", str(folder), "-o", str(tmp_path / "z9.ome.zarr"), "--preset", "cellvoyager",
                 "--plane", "9"]) == 1  # fmt: skip
    assert "no plane 9 in the files (found planes [1, 2])" in capsys.readouterr().err
    (folder / "notes_A01.tif").write_bytes(b"")
    assert (
        main(["convert", str(folder), "-o", str(tmp_path / "bad.ome.zarr"), "--preset", "cellvoyager"]) == 1
    )
    assert "do not follow the cellvoyager naming" in capsys.readouterr().err
