"""File layouts of high-content instruments: file names -> plate / well / field / channel, plus the channel
names, pixel size and plate name from the metadata files the instruments export beside the images.

- ``harmony``: PerkinElmer / Revvity Harmony (Opera Phenix, Operetta CLS) exports,
  ``r01c01f01p01-ch1sk1fk1fl1.tiff`` (row, column, field, plane, channel, timepoint sk) with
  ``Index.idx.xml`` or ``Index.xml`` (ChannelID -> ChannelName, ImageResolutionX/Y in metres, plate Name).
- ``metaxpress``: Molecular Devices MetaXpress / ImageXpress, ``<plate>_A01_s1_w1<GUID>.tif`` (site and
  wavelength optional, ``_thumb`` previews skipped, ``TimePoint_N`` / ``ZStep_N`` folders) with an
  optional ``.HTD`` file (``"WaveName1", "DAPI"``) and MetaSeries tags (``_IllumSetting_``,
  ``spatial-calibration-x``).
- ``cellvoyager``: Yokogawa CellVoyager (CV7000 / CV8000), ``<plate>_A01_T0001F001L01A01Z01C01.tif``
  (timepoint, field, timeline, action, plane, channel) with ``MeasurementDetail.mrf``
  (``bts:MeasurementChannel`` pixel sizes, plate name) and its ``.mes`` (``bts:Channel bts:Target``).

One plane and one timepoint are converted (the first, unless chosen): cellfm plates are 2-D fields.
"""

from __future__ import annotations

import logging
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from .tiff_ingest import TiffRecord, records_from_pattern

log = logging.getLogger(__name__)

PATTERNS = {
    "harmony": r"^r(?P<row>\d{2})c(?P<column>\d{2})f(?P<field>\d+)p(?P<plane>\d+)-ch(?P<channel>\d+)"
    r"sk(?P<time>\d+)fk\d+fl\d+\.tiff?$",
    "metaxpress": r"^(?P<plate>.+?)_(?P<well>[A-Z]{1,2}\d{2})(?:_s(?P<field>\d+))?(?:_w(?P<channel>\d+))?"
    r"(?:[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})?\.tiff?$",
    "cellvoyager": r"^(?P<plate>.+)_(?P<well>[A-Z]{1,2}\d{2})_T(?P<time>\d{4})F(?P<field>\d{3})L\d{2}A\d{2}"
    r"Z(?P<plane>\d{2})C(?P<channel>\d{2})\.tiff?$",
}
PRESETS = tuple(PATTERNS)


@dataclass
class Layout:
    """What a preset found: records, channel labels as TOKEN=LABEL pairs, pixel size (y, x) in um."""

    records: list[TiffRecord]
    channel_names: list[str] | None = None
    pixel_size: tuple[float, float] | None = None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1].split(":")[-1]


def _children(node: ET.Element, name: str) -> list[ET.Element]:
    return [n for n in node.iter() if _local(n.tag) == name]


def _text(node: ET.Element, name: str) -> str | None:
    found = _children(node, name)
    return found[0].text.strip() if found and found[0].text else None


def _attr(node: ET.Element, name: str) -> str | None:
    return next((v for k, v in node.attrib.items() if _local(k) == name), None)


def _metres_to_um(value: str | None, unit: str | None) -> float | None:
    if value is None:
        return None
    scale = {"m": 1e6, "mm": 1e3, "um": 1.0, "µm": 1.0, "nm": 1e-3}.get((unit or "m").strip(), None)
    if scale is None:
        raise ValueError(f"unsupported length unit {unit!r} (expected m, mm, µm or nm)")
    return float(value) * scale


def _find(inputs: list[str], names: tuple[str, ...], suffix: str | None = None) -> str | None:
    """The first metadata file called one of `names` (or ending in `suffix`) in or above the input folders."""
    folders = []
    for item in inputs:
        folder = item if os.path.isdir(item) else os.path.dirname(os.path.abspath(item))
        folders += [folder, os.path.dirname(os.path.abspath(folder))]
        for base, _, _ in os.walk(folder):
            folders.append(base)
    for folder in dict.fromkeys(folders):
        try:
            entries = sorted(os.listdir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry in names or (suffix and entry.lower().endswith(suffix)):
                return os.path.join(folder, entry)
    return None


def _pick(files: list[str], pattern: str, group: str, wanted: int | None, what: str) -> list[str]:
    """Keep the files whose `group` (or folder such as TimePoint_N) equals `wanted` (default: the lowest)."""
    regex = re.compile(pattern)
    values = {}
    for path in files:
        m = regex.search(os.path.basename(path))
        value = m.group(group) if m and group in regex.groupindex and m.group(group) else None
        if value is None:  # MetaXpress keeps timepoints and planes in folders
            folder = re.search(rf"{'TimePoint' if group == 'time' else 'ZStep'}_(\d+)", os.path.dirname(path))
            value = folder.group(1) if folder else "1"
        values[path] = int(value)
    found = sorted(set(values.values()))
    choice = found[0] if wanted is None else wanted
    if choice not in found:
        raise ValueError(f"no {what} {choice} in the files (found {what}s {found})")
    if len(found) > 1:
        log.warning("%d %ss found (%s); converting %s %d", len(found), what, found, what, choice)
    return [p for p in files if values[p] == choice]


def _harmony_meta(inputs: list[str]) -> tuple[dict[str, str], tuple[float, float] | None, str]:
    index = _find(inputs, ("Index.idx.xml", "Index.xml"))
    if index is None:
        log.warning("no Index.idx.xml / Index.xml found beside the images: channels keep their numbers")
        return {}, None, ""
    root = ET.parse(index).getroot()
    names: dict[str, str] = {}
    pixel = None
    for node in _children(root, "Image") + _children(root, "Entry"):
        ch = _text(node, "ChannelID") or _attr(node, "ChannelID")
        name = _text(node, "ChannelName")
        if ch and name:
            if names.setdefault(ch, name) != name:
                raise ValueError(f"{index}: channel {ch} is named both {names[ch]!r} and {name!r}")
        rx = [n for n in node if _local(n.tag) == "ImageResolutionX"]
        ry = [n for n in node if _local(n.tag) == "ImageResolutionY"]
        if pixel is None and rx:
            x = _metres_to_um(rx[0].text, rx[0].get("Unit"))
            y = _metres_to_um(ry[0].text, ry[0].get("Unit")) if ry else x
            pixel = (y, x)
    plates = _children(root, "Plate")
    plate = (_text(plates[0], "Name") or _text(plates[0], "PlateID") or "") if plates else ""
    return names, pixel, plate


def _metaseries(path: str) -> tuple[str | None, tuple[float, float] | None]:
    """(_IllumSetting_, pixel size) from a MetaSeries ImageDescription, if the TIFF has one."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        text = tif.pages[0].description or ""
    if not text.startswith("<MetaData>"):
        return None, None
    props = {p.get("id"): p.get("value") for p in ET.fromstring(text).iter("prop")}
    x, y = props.get("spatial-calibration-x"), props.get("spatial-calibration-y")
    unit = (props.get("spatial-calibration-units") or "um").replace("\u00b5", "µ")
    pixel = (
        (_metres_to_um(y or x, unit), _metres_to_um(x, unit)) if x and unit in ("um", "µm", "nm") else None
    )
    return props.get("_IllumSetting_"), pixel


def _metaxpress_meta(inputs: list[str], records: list[TiffRecord]) -> tuple[dict[str, str], tuple | None]:
    names: dict[str, str] = {}
    htd = _find(inputs, (), ".htd")
    if htd is not None:
        with open(htd, errors="replace") as fh:
            for line in fh:
                m = re.match(r'\s*"WaveName(\d+)"\s*,\s*"([^"]*)"', line)
                if m and m.group(2):
                    names[m.group(1)] = m.group(2)
    pixel = None
    for channel in sorted({r.channel for r in records if r.channel}):
        first = next(r.path for r in records if r.channel == channel)
        illum, size = _metaseries(first)
        if illum and channel not in names:
            names[channel] = illum
        pixel = pixel or size
    if pixel is None and records:
        pixel = _metaseries(records[0].path)[1]
    return names, pixel


def _cellvoyager_meta(inputs: list[str]) -> tuple[dict[str, str], tuple[float, float] | None, str]:
    mrf = _find(inputs, ("MeasurementDetail.mrf",))
    if mrf is None:
        log.warning("no MeasurementDetail.mrf found beside the images: no channel names or pixel size")
        return {}, None, ""
    root = ET.parse(mrf).getroot()
    pixel = None
    for node in _children(root, "MeasurementChannel"):
        x, y = _attr(node, "HorizontalPixelDimension"), _attr(node, "VerticalPixelDimension")
        if x and pixel is None:
            pixel = (float(y or x), float(x))
    plates = _children(root, "MeasurementSamplePlate")
    plate = (_attr(plates[0], "Name") or "") if plates else ""
    names: dict[str, str] = {}
    mes_name = _attr(root, "MeasurementSettingFileName")
    mes = os.path.join(os.path.dirname(mrf), mes_name) if mes_name else _find(inputs, (), ".mes")
    if mes and os.path.isfile(mes):
        for node in _children(ET.parse(mes).getroot(), "Channel"):
            ch, target = _attr(node, "Ch"), _attr(node, "Target")
            if ch and target:
                names[f"{int(ch):02d}"] = target
    return names, pixel, plate


def read_layout(preset: str, files: list[str], inputs: list[str], *, plane: int | None = None,
                timepoint: int | None = None) -> Layout:  # fmt: skip
    """Records, channel labels and pixel size of an instrument export (`files` found under `inputs`)."""
    if preset not in PATTERNS:
        raise ValueError(f"unknown preset {preset!r} (expected one of {PRESETS})")
    pattern = PATTERNS[preset]
    regex = re.compile(pattern)
    files = [f for f in files if "_thumb" not in os.path.basename(f).lower()]
    unmatched = [f for f in files if not regex.search(os.path.basename(f))]
    if unmatched:
        raise ValueError(f"{len(unmatched)} file(s) do not follow the {preset} naming, e.g. {unmatched[:3]}")
    files = _pick(files, pattern, "plane", plane, "plane")
    files = _pick(files, pattern, "time", timepoint, "timepoint")
    records = records_from_pattern(files, pattern)
    if preset == "harmony":
        names, pixel, plate = _harmony_meta(inputs)
    elif preset == "metaxpress":
        (names, pixel), plate = _metaxpress_meta(inputs, records), ""
    else:
        names, pixel, plate = _cellvoyager_meta(inputs)
    if plate:
        records = [TiffRecord(r.path, plate, r.well, r.field, r.channel) for r in records]
    tokens = sorted({r.channel for r in records if r.channel is not None})
    labels = [f"{t}={names[t]}" for t in tokens] if tokens and all(t in names for t in tokens) else None
    if tokens and names and labels is None:
        log.warning(
            "channel names %s do not cover the channels %s of the files; keeping numbers", names, tokens
        )
    return Layout(records, labels, pixel)
