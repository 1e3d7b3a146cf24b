"""Map TIFF files to plate / well / field / channel, from a filename regex or a CSV manifest."""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass

from cellfm.data.stores import BIOIO_SUFFIXES, TIFF_SUFFIXES

# Matches e.g. r02c05f03p01-ch1 style names loosely; users usually pass their own.
DEFAULT_PATTERN = (
    r"(?P<well>[A-Pa-p]\d{1,2})_(?:s|f|site|field)?(?P<field>\d+)(?:_(?:w|ch|c)?(?P<channel>[^_.]+))?"
)


@dataclass(frozen=True)
class TiffRecord:
    """One TIFF file and where it goes: well is ``"A/1"``, channel is None for multi-channel files."""

    path: str
    plate: str
    well: str
    field: str
    channel: str | None


def normalise_well(text: str, where: str = "") -> str:
    """'A01', 'a1', 'A/1', 'A_01' -> 'A/1'; rows are letters, columns are numbers."""
    m = re.fullmatch(r"\s*([A-Za-z]{1,2})[\s/_-]*0*(\d{1,3})\s*", str(text))
    if not m:
        raise ValueError(f"{where}: cannot read a well from {text!r} (expected e.g. 'A01', 'B/3')")
    return f"{m.group(1).upper()}/{int(m.group(2))}"


def expand_inputs(inputs: list[str]) -> list[str]:
    """TIFF (and .nd2/.czi/.lif) files named directly or found (recursively) under folders, sorted."""
    files: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            for base, _, names in os.walk(item):
                files += [
                    os.path.join(base, n) for n in names if n.lower().endswith(TIFF_SUFFIXES + BIOIO_SUFFIXES)
                ]
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    if not files:
        raise FileNotFoundError(
            f"no image files ({', '.join(TIFF_SUFFIXES + BIOIO_SUFFIXES)}) found in {inputs}"
        )
    return sorted(files)


def well_from_groups(groups: dict[str, str | None], where: str) -> str:
    if groups.get("well"):
        return normalise_well(groups["well"], where)
    row, col = groups.get("row"), groups.get("column") or groups.get("col")
    if row and col:
        row = chr(ord("A") + int(row) - 1) if row.isdigit() else row  # numeric rows: 1 -> A
        return normalise_well(f"{row}{col}", where)
    raise ValueError(f"{where}: no well (need a 'well' group or 'row' and 'column' groups)")


def records_from_pattern(files: list[str], pattern: str, plate: str = "") -> list[TiffRecord]:
    """Parse file names with a regex whose named groups give well (or row+column), field, channel, plate.

    Without a `plate` group or argument the plate is "" (the converter then names it after its output)."""
    regex = compile_pattern(pattern)
    names = set(regex.groupindex)
    if not ({"well"} <= names or {"row", "column"} <= names or {"row", "col"} <= names):
        raise ValueError(f"pattern {pattern!r} needs a named group 'well' or groups 'row' and 'column'")
    records, unmatched = [], []
    for path in files:
        m = regex.search(os.path.basename(path))
        if not m:
            unmatched.append(path)
            continue
        g = m.groupdict()
        field = field_from_groups(g)
        records.append(TiffRecord(path, g.get("plate") or plate, well_from_groups(g, path), field,
                                  g.get("channel")))  # fmt: skip
    if unmatched:
        raise ValueError(f"{len(unmatched)} file(s) do not match pattern {pattern!r}, e.g. {unmatched[:3]}")
    return records


def field_from_groups(g: dict) -> str:
    """The field name of a match: digits lose leading zeros (`f01` and `f1` are one field), no group is "0"."""
    field = g.get("field") or ""
    return str(int(field)) if field.isdigit() else (field or "0")


def compile_pattern(pattern: str, what: str = "pattern") -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ValueError(f"{what} {pattern!r} is not a valid regular expression: {err}") from None


def split_label_files(
    files: list[str], pattern: str, name: str = "cells"
) -> tuple[list[str], dict[tuple[str, str], dict[str, str]]]:
    """(image files, {(well, field): {label name: path}}) for the files whose names match `pattern`,
    a regex with groups well (or row, column), field and optionally name (else `name`)."""
    regex = compile_pattern(pattern, "labels pattern")
    if not ({"well"} <= set(regex.groupindex) or {"row", "column"} <= set(regex.groupindex)):
        raise ValueError(
            f"labels pattern {pattern!r} needs a named group 'well' or groups 'row' and 'column'"
        )
    images, labels = [], {}
    for path in files:
        m = regex.search(os.path.basename(path))
        if not m:
            images.append(path)
            continue
        g = m.groupdict()
        field = field_from_groups(g)
        entry = labels.setdefault((well_from_groups(g, path), field), {})
        key = g.get("name") or name
        if key in entry:
            raise ValueError(f"labels {key!r} of {path}: two files {entry[key]} and {path}")
        entry[key] = path
    if not labels:
        raise ValueError(f"no file matches the labels pattern {pattern!r}")
    return images, labels


def tiff_pixel_size(path: str) -> tuple[float, float] | None:
    """(y, x) micrometres per pixel from OME-TIFF `PhysicalSizeY/X` or ImageJ resolution, else None."""
    import tifffile

    scale = {"nm": 1e-3, "µm": 1.0, "um": 1.0, "micron": 1.0, "mm": 1e3, "\\u00B5m": 1.0}
    with tifffile.TiffFile(path) as tif:
        if tif.is_ome:
            image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
            pixels = (image[0] if isinstance(image, list) else image)["Pixels"]
            sizes = [pixels.get(f"PhysicalSize{a}") for a in "YX"]
            units = [str(pixels.get(f"PhysicalSize{a}Unit", "µm")) for a in "YX"]
            if sizes[1] is not None:
                y = sizes[0] if sizes[0] is not None else sizes[1]
                if any(u not in scale for u in units):
                    raise ValueError(f"{path}: unsupported PhysicalSize unit {units} (expected nm, µm or mm)")
                return float(y) * scale[units[0]], float(sizes[1]) * scale[units[1]]
        meta = tif.imagej_metadata or {}
        unit = str(meta.get("unit", "")).replace("\\u00B5", "µ")
        tags = tif.pages[0].tags
        if unit in scale and "XResolution" in tags and "YResolution" in tags:
            (xn, xd), (yn, yd) = tags["XResolution"].value, tags["YResolution"].value
            if xn and yn:
                return yd / yn * scale[unit], xd / xn * scale[unit]
    return None


def records_from_csv(manifest: str, plate: str = "") -> list[TiffRecord]:
    """Read a manifest with columns path, well (or row, column), field, channel (optional), plate (optional)."""
    base = os.path.dirname(os.path.abspath(manifest))
    records = []
    with open(manifest, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or [])
        if "path" not in cols or not ({"well"} <= cols or {"row", "column"} <= cols):
            raise ValueError(
                f"{manifest}: needs columns 'path' and 'well' (or 'row', 'column'); has {sorted(cols)}"
            )
        for i, row in enumerate(reader, start=2):
            where = f"{manifest}:{i}"
            path = row["path"] if os.path.isabs(row["path"]) else os.path.join(base, row["path"])
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{where}: file {path} does not exist")
            field = (row.get("field") or "0").strip()
            field = str(int(field)) if field.isdigit() else field
            records.append(TiffRecord(path, row.get("plate") or plate, well_from_groups(row, where), field,
                                      row.get("channel") or None))  # fmt: skip
    if not records:
        raise ValueError(f"{manifest}: manifest lists no files")
    return records


def natural_key(text: str) -> tuple:
    """Sort key comparing digit runs as numbers: ch2 < ch10, w1 < w2, Actin < DAPI."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.findall(r"\d+|\D+", text))


def channel_plan(
    found: list[str], order: list[str] | None = None, names: list[str] | None = None
) -> tuple[list[str], list[str]]:
    """(channel tokens of the files in store order, their labels). The order is `order` if given, else
    the tokens of `names` (matched by name), else `found` in natural order. `names` may map tokens
    explicitly (``w1=DAPI``); a name or token that the files do not have is an error, never a relabel."""
    found_set = set(found)
    if names and all("=" in n for n in names):
        pairs = [tuple(p.strip() for p in n.split("=", 1)) for n in names]
        order = order or [t for t, _ in pairs]
        mapping = dict(pairs)
        if sorted(mapping) != sorted(order):
            raise ValueError(f"channel names {names} map tokens {sorted(mapping)}, but the order is {order}")
        names = [mapping[t] for t in order]
    elif names and any("=" in n for n in names):
        raise ValueError(f"channel names {names}: give all as TOKEN=LABEL or none")
    if order is None and names:
        unknown = [n for n in names if n not in found_set]
        if unknown or len(names) != len(found):
            raise ValueError(
                f"channel names {names} are matched to the channels found in the file names {found} by name, "
                f"and {unknown or 'some channels'} {'are not among them' if unknown else 'are not named'}; to label them, "
                f"map tokens to labels (e.g. {found[0]}=DAPI) or give the channel order (--channel-order "
                f"{','.join(found)}) with the labels in that order"
            )
        order = list(names)
    order = list(order or found)
    unknown = [t for t in order if t not in found_set]
    missing = [t for t in found if t not in set(order)]
    if unknown or missing or len(set(order)) != len(order):
        raise ValueError(
            f"channel order {order} must list each channel found in the file names once: {found}"
            + (f"; unknown {unknown}" if unknown else "") + (f"; missing {missing}" if missing else "")
        )  # fmt: skip
    labels = list(names or order)
    if len(labels) != len(order):
        raise ValueError(f"{len(labels)} channel names {labels} for {len(order)} channels {order}")
    return order, labels


def labels_from_csv(manifest: str, name: str = "cells") -> dict[tuple[str, str], dict[str, str]] | None:
    """{(well, field): {name: path}} from a manifest's optional `labels` column (None without one)."""
    base = os.path.dirname(os.path.abspath(manifest))
    out: dict[tuple[str, str], dict[str, str]] = {}
    with open(manifest, newline="") as fh:
        reader = csv.DictReader(fh)
        if "labels" not in (reader.fieldnames or []):
            return None
        for i, row in enumerate(reader, start=2):
            if not (row.get("labels") or "").strip():
                continue
            where = f"{manifest}:{i}"
            path = row["labels"] if os.path.isabs(row["labels"]) else os.path.join(base, row["labels"])
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{where}: labels file {path} does not exist")
            field = (row.get("field") or "0").strip()
            key = (well_from_groups(row, where), str(int(field)) if field.isdigit() else field)
            if out.setdefault(key, {}).setdefault(name, path) != path:
                raise ValueError(f"{where}: field {key} has two label files {out[key][name]} and {path}")
    return out


def group_fields(records: list[TiffRecord]) -> tuple[str, list[str] | None, dict[tuple[str, str], dict]]:
    """Group records into fields: (plate, channel order or None, {(well, field): {channel: path}})."""
    plates = sorted({r.plate for r in records})
    if len(plates) > 1:
        raise ValueError(f"inputs span several plates {plates}; convert one plate per output store")
    with_channel = {r.channel is not None for r in records}
    if len(with_channel) > 1:
        raise ValueError("some files have a channel and some do not; use one file per channel or per field")
    fields: dict[tuple[str, str], dict] = {}
    for r in records:
        entry = fields.setdefault((r.well, r.field), {})
        key = r.channel if r.channel is not None else ""
        if key in entry:
            raise ValueError(f"{r.well} field {r.field} channel {key!r}: two files {entry[key]} and {r.path}")
        entry[key] = r.path
    channels = None
    if True in with_channel:
        channels = sorted({r.channel for r in records}, key=natural_key)
        for (well, field), entry in fields.items():
            if set(entry) != set(channels):
                raise ValueError(
                    f"well {well} field {field} has channels {sorted(entry)}; other fields have {channels}"
                )

    def order(key: tuple[str, str]) -> tuple:
        row, col = key[0].split("/")
        return (len(row), row, int(col), len(key[1]), key[1])

    ordered = {k: fields[k] for k in sorted(fields, key=order)}
    return plates[0], channels, ordered
