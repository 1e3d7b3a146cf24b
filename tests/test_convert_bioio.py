"""`cellfm convert` of .czi / .lif / .nd2 files through bioio: scenes -> fields (or wells), channel names and
pixel size from the file's metadata, z plane / max projection / timepoint, pixel-exact, valid OME-Zarr.

CZI, LIF and ND2 files are written here (tests/bioio_fixtures.py: pylibCZIrw for CZI, the documented
containers byte by byte for LIF and ND2); timepoints run on an in-memory bioio image through the same mapping."""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest
import zarr

from cellfm.cli import main
from cellfm.data import bioio_reader, list_fields
from cellfm.data.convert import convert_plate
from tests.bioio_fixtures import write_czi, write_lif, write_nd2
from tests.ome_validation import read_with_ome_zarr, validate_store

PIXEL = (0.33, 0.325)  # (y, x) micrometres


@pytest.fixture(autouse=True)
def _readers_installed():
    for module in ("bioio", "bioio_czi", "bioio_lif", "bioio_nd2", "pylibCZIrw"):
        if importlib.util.find_spec(module) is None:
            pytest.fail(f"{module} is missing: pip install -e '.[bioio]' (scripts/setup.sh does)")
    bioio_reader.scan.cache_clear()


def scenes(names: list[str], shape=(3, 2, 20, 30), seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.integers(0, 4000, shape, dtype=np.uint16) for name in names}


def _fields(out: str) -> dict[tuple[str, str], object]:
    return {(f.well, f.field): f for f in list_fields(out)}


def _scale(out: str, field) -> list[float]:
    attrs = dict(zarr.open_group(out, mode="r")[f"{field.well[0]}/{field.well[1:]}/{field.field}"].attrs)
    return attrs.get("ome", attrs)["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]


def test_czi_scenes_become_fields_of_the_well_in_its_name(tmp_path, capsys):
    data = scenes(["Scene 1", "Scene 2", "Scene 3"])
    path = str(tmp_path / "plate7_B03.czi")
    write_czi(path, data, ["DAPI", "Actin", "Tubulin"], PIXEL)
    out = str(tmp_path / "czi.ome.zarr")
    assert main(["convert", path, "-o", out, "--chunk", "16"]) == 0
    assert "channels ['DAPI', 'Actin', 'Tubulin'], 0.325 um/pixel" in capsys.readouterr().out
    fields = _fields(out)
    assert sorted(fields) == [("B3", "0"), ("B3", "1"), ("B3", "2")]
    for i, array in enumerate(data.values()):
        field = fields[("B3", str(i))]
        assert field.channel_names == ["DAPI", "Actin", "Tubulin"] and field.plate == "czi"
        np.testing.assert_array_equal(field.read_full(), array[:, 0])  # plane 0 by default
        assert _scale(out, field)[-2:] == pytest.approx(list(PIXEL))
    assert validate_store(out)["images"] == 3
    assert read_with_ome_zarr(out)
    # a rerun finds every field complete; --max-project and --plane pick other planes
    assert main(["convert", path, "-o", out, "--chunk", "16"]) == 0
    assert "wrote 0 fields, 3 already complete" in capsys.readouterr().out
    projected = str(tmp_path / "max.ome.zarr")
    assert main(["convert", path, "-o", projected, "--max-project", "--ngff-version", "0.5"]) == 0
    np.testing.assert_array_equal(_fields(projected)[("B3", "1")].read_full(), data["Scene 2"].max(axis=1))
    assert validate_store(projected)["version"] == "0.5"
    second = str(tmp_path / "z1.ome.zarr")
    assert (
        main(["convert", path, "-o", second, "--plane", "1", "--channel-names", "Hoechst,Phalloidin,Tub"])
        == 0
    )
    field = _fields(second)[("B3", "2")]
    np.testing.assert_array_equal(field.read_full(), data["Scene 3"][:, 1])
    assert field.channel_names == ["Hoechst", "Phalloidin", "Tub"]  # relabels in the file's channel order


def test_lif_scenes_named_by_well_become_wells(tmp_path):
    data = scenes(["A1 Region 1", "A1 Region 2", "Plate/C/4/R1"], shape=(2, 3, 16, 24), seed=1)
    path = str(tmp_path / "run.lif")
    write_lif(path, data, ["Blue", "Green"], PIXEL)
    out = str(tmp_path / "lif.ome.zarr")
    assert main(["convert", path, "-o", out, "--scenes", "wells", "--plane", "2", "--chunk", "16"]) == 0
    fields = _fields(out)
    assert sorted(fields) == [("A1", "0"), ("A1", "1"), ("C4", "0")]
    for (well, fld), name in zip([("A1", "0"), ("A1", "1"), ("C4", "0")], data):
        np.testing.assert_array_equal(fields[(well, fld)].read_full(), data[name][:, 2])
        assert fields[(well, fld)].channel_names == ["Blue", "Green"]  # LIF names channels by their LUT
        assert _scale(out, fields[(well, fld)])[-2:] == pytest.approx(list(PIXEL))
    assert validate_store(out) == {"version": "0.4", "wells": 2, "images": 3, "labels": 0}


def test_fields_are_numbered_per_well_across_files(tmp_path):
    first, second = (
        scenes(["A1", "B2"], shape=(1, 1, 8, 8), seed=2),
        scenes(["A1"], shape=(1, 1, 8, 8), seed=3),
    )
    write_lif(str(tmp_path / "day1.lif"), first, ["Gray"], PIXEL)
    write_lif(str(tmp_path / "day2.lif"), second, ["Gray"], PIXEL)
    out = str(tmp_path / "two.ome.zarr")
    assert main(["convert", str(tmp_path), "-o", out, "--scenes", "wells"]) == 0
    fields = _fields(out)
    assert sorted(fields) == [("A1", "0"), ("A1", "1"), ("B2", "0")]
    np.testing.assert_array_equal(fields[("A1", "1")].read_full(), second["A1"][:, 0])
    write_lif(str(tmp_path / "C3_a.lif"), first, ["Gray"], PIXEL)  # fields mode: one well in two files
    write_lif(str(tmp_path / "C3_b.lif"), second, ["Gray"], PIXEL)
    records = bioio_reader.records_from_files(sorted(str(p) for p in tmp_path.glob("C3_*.lif")))
    assert [(r.well, r.field, r.path.file[-8:], r.path.scene) for r in records] == [
        ("C/3", "0", "C3_a.lif", 0), ("C/3", "1", "C3_a.lif", 1), ("C/3", "2", "C3_b.lif", 0),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="files given twice"):
        bioio_reader.records_from_files([records[0].path.file, records[0].path.file])


def test_mapping_errors_name_the_file_and_the_fix(tmp_path, capsys):
    data = scenes(["A1", "B2"], shape=(2, 2, 8, 8))
    lif = str(tmp_path / "run.lif")
    write_lif(lif, data, ["Blue", "Green"], PIXEL)
    out = str(tmp_path / "x.ome.zarr")
    assert main(["convert", lif, "-o", out]) == 1  # fields mode: no well in "run.lif"
    assert "run.lif: no well in the file name" in capsys.readouterr().err
    assert main(["convert", lif, "-o", out, "--scenes", "wells", "--plane", "5"]) == 1
    assert "--plane 5 is out of range; it has 2 z plane(s)" in capsys.readouterr().err
    assert main(["convert", lif, "-o", out, "--scenes", "wells", "--channel-names", "Green,Blue"]) == 1
    assert "reorder the OME channels ['Blue', 'Green']" in capsys.readouterr().err  # never a silent relabel
    other = str(tmp_path / "A02.lif")
    write_lif(other, scenes(["s"], shape=(2, 1, 8, 8)), ["Blue", "Red"], PIXEL)
    with pytest.raises(ValueError, match=r"A02.lif scene 's' has channels \['Blue', 'Red'\]"):
        bioio_reader.records_from_files([lif, other], scenes="wells")
    assert not os.path.exists(out)


def test_nd2_positions_named_by_well_become_wells(tmp_path, capsys):
    data = scenes(["A1", "A1#2", "B2"], shape=(2, 3, 10, 14), seed=4)
    path = str(tmp_path / "plate.nd2")
    write_nd2(path, data, ["DAPI", "GFP"], 0.65, z_um=2.0)
    out = str(tmp_path / "nd2.ome.zarr")
    assert main(["convert", path, "-o", out, "--scenes", "wells", "--max-project", "--chunk", "16"]) == 0
    assert "channels ['DAPI', 'GFP'], 0.65 um/pixel" in capsys.readouterr().out
    fields = _fields(out)
    assert sorted(fields) == [("A1", "0"), ("A1", "1"), ("B2", "0")]
    for key, name in zip([("A1", "0"), ("A1", "1"), ("B2", "0")], data):
        np.testing.assert_array_equal(fields[key].read_full(), data[name].max(axis=1))
        assert _scale(out, fields[key])[-2:] == pytest.approx([0.65, 0.65])
    assert validate_store(out) == {"version": "0.4", "wells": 2, "images": 3, "labels": 0}
    assert read_with_ome_zarr(out)


def test_czi_timepoint_choice(tmp_path, caplog):
    rng = np.random.default_rng(9)
    movie = rng.integers(0, 4000, (3, 2, 1, 8, 12), dtype=np.uint16)  # T, C, Z, Y, X
    path = str(tmp_path / "C07_movie.czi")
    write_czi(path, {"s0": movie}, ["DAPI", "GFP"], PIXEL)
    with caplog.at_level("WARNING"):
        first = bioio_reader.records_from_files([path])
    assert "3 timepoints, converting timepoint 0" in caplog.text
    np.testing.assert_array_equal(bioio_reader.read_scene(first[0].path), movie[0, :, 0])
    out = str(tmp_path / "t2.ome.zarr")
    assert main(["convert", path, "-o", out, "--timepoint", "2"]) == 0
    np.testing.assert_array_equal(_fields(out)[("C7", "0")].read_full(), movie[2, :, 0])
    assert main(["convert", path, "-o", str(tmp_path / "t9.ome.zarr"), "--timepoint", "9"]) == 1


def _fake_nd2(positions: list[np.ndarray], names: list[str]):
    """An in-memory bioio image standing in for an ND2 file (T, C, Z, Y, X per position)."""
    from bioio import BioImage
    from bioio_base.types import PhysicalPixelSizes

    return BioImage(positions, dim_order="TCZYX", channel_names=[names] * len(positions),
                    physical_pixel_sizes=PhysicalPixelSizes(2.0, 0.65, 0.65))  # fmt: skip


def test_timepoint_choice_on_an_in_memory_image(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    positions = [rng.integers(0, 60000, (3, 2, 1, 12, 16), dtype=np.uint16) for _ in range(2)]
    path = str(tmp_path / "exp_D12.nd2")
    monkeypatch.setattr(bioio_reader, "open_image", lambda p: _fake_nd2(positions, ["DAPI", "GFP"]))
    records = bioio_reader.records_from_files([path], timepoint=2)
    assert [(r.well, r.field, str(r.path)) for r in records] == [
        ("D/12", "0", f"{path} (scene 0 'Image:0')"),
        ("D/12", "1", f"{path} (scene 1 'Image:1')"),
    ]
    out = str(tmp_path / "nd2.ome.zarr")
    report = convert_plate(records, out, chunk=16)
    assert report.channels == ["DAPI", "GFP"] and report.pixel_size == (0.65, 0.65)
    fields = _fields(out)
    for i in range(2):
        np.testing.assert_array_equal(fields[("D12", str(i))].read_full(), positions[i][2, :, 0])
    assert validate_store(out)["images"] == 2


def test_nd2_opens_with_the_nd2_plugin_and_missing_readers_say_how_to_install(tmp_path, monkeypatch, capsys):
    bogus = tmp_path / "A01.nd2"
    bogus.write_bytes(b"not an nd2 file" * 10)
    with pytest.raises(ValueError, match=r"A01.nd2: cannot read it as a .nd2 file"):
        bioio_reader.open_image(str(bogus))
    real = importlib.import_module

    def without_nd2(name, *args):
        if name == "bioio_nd2":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_nd2)
    assert main(["convert", str(bogus), "-o", str(tmp_path / "n.ome.zarr")]) == 1
    err = capsys.readouterr().err
    assert "A01.nd2: reading .nd2 files needs bioio and bioio-nd2" in err
    assert "pip install 'cellfm[bioio]'" in err


def test_the_bioio_extra_declares_every_plugin_and_stores_point_to_convert(tmp_path, capsys):
    import tomllib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as fh:
        extra = tomllib.load(fh)["project"]["optional-dependencies"]["bioio"]
    declared = {r.split(">")[0].replace("-", "_") for r in extra}
    assert {"bioio", *bioio_reader._PLUGINS.values()} <= declared
    with open(os.path.join(root, "scripts", "setup.sh")) as fh:
        assert "bioio" in fh.read()
    path = str(tmp_path / "A01.czi")
    write_czi(path, scenes(["s"], shape=(1, 1, 8, 8)), ["DAPI"], PIXEL)
    assert main(["inspect", path]) == 1
    assert f"convert it first: cellfm convert {path}" in capsys.readouterr().err


def test_label_tiffs_attach_to_the_scenes_fields(tmp_path, capsys):
    import tifffile

    folder = tmp_path / "export"
    folder.mkdir()
    data = scenes(["p1", "p2"], shape=(2, 1, 16, 16), seed=5)
    write_czi(str(folder / "B03.czi"), data, ["DAPI", "GFP"], PIXEL)
    masks = {}
    for field in (0, 1):
        masks[field] = np.zeros((16, 16), np.uint16)
        masks[field][2:6, 3 + field : 9] = field + 1
        tifffile.imwrite(folder / f"B03_f{field}_nuclei.tif", masks[field])
    out = str(tmp_path / "labelled.ome.zarr")
    args = [
        "convert",
        str(folder),
        "-o",
        out,
        "--labels-pattern",
        r"(?P<well>[A-P]\d+)_f(?P<field>\d+)_nuclei",
    ]
    assert main([*args, "--labels-name", "nuclei"]) == 0
    assert validate_store(out)["labels"] == 2
    root = zarr.open_group(out, mode="r")
    for field in (0, 1):
        np.testing.assert_array_equal(root[f"B/3/{field}/labels/nuclei/0"][:].squeeze(), masks[field])
    tiff = str(tmp_path / "A01_s1_DAPI.tif")
    tifffile.imwrite(tiff, masks[0])
    assert main(["convert", tiff, "-o", str(tmp_path / "t.ome.zarr"), "--scenes", "wells"]) == 1
    assert "--scenes apply to .nd2/.czi/.lif inputs" in capsys.readouterr().err


def test_czi_hcs_scenes_map_to_the_wells_their_shapes_name(tmp_path):
    data = scenes(["ScanRegion0", "ScanRegion1", "ScanRegion2"], shape=(1, 1, 8, 12), seed=7)
    path = str(tmp_path / "hcs.czi")
    write_czi(path, data, ["Hoechst"], PIXEL, shapes=["B4", "B4", "C5"])
    records = bioio_reader.records_from_files([path], scenes="wells")
    assert [(r.well, r.field, r.path.name) for r in records] == [
        ("B/4", "0", "ScanRegion0-B4"), ("B/4", "1", "ScanRegion1-B4"), ("C/5", "0", "ScanRegion2-C5"),
    ]  # fmt: skip
    out = str(tmp_path / "hcs.ome.zarr")
    convert_plate(records, out, chunk=16)
    np.testing.assert_array_equal(_fields(out)[("B4", "1")].read_full(), data["ScanRegion1"][:, 0])
