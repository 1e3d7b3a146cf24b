"""OME-Zarr (NGFF 0.1-0.5) metadata: parse `multiscales`, `omero`, `plate`, `well` into small records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# NGFF 0.1/0.2 images carry no `axes`: the spec fixes them to t, c, z, y, x.
DEFAULT_AXES = ("t", "c", "z", "y", "x")
SUPPORTED_AXES = frozenset("tczyx")


@dataclass(frozen=True)
class Multiscale:
    """One `multiscales[i]` entry: axis names, dataset paths (finest first) and their scales."""

    version: str
    axes: tuple[str, ...]
    paths: tuple[str, ...]
    scales: tuple[tuple[float, ...], ...]
    name: str = ""


@dataclass(frozen=True)
class PlateMeta:
    """The `plate` block: well paths (``"A/1"``), rows, columns and the declared field count."""

    version: str
    name: str
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    wells: tuple[str, ...]
    field_count: int | None


@dataclass(frozen=True)
class WellMeta:
    """The `well` block: the image (field) paths inside the well group."""

    version: str
    images: tuple[str, ...]


def ome_attrs(attrs: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """Return (version, OME block). NGFF 0.5 nests everything under `ome`; 0.4 and earlier do not."""
    if isinstance(attrs.get("ome"), dict):
        block = attrs["ome"]
        return str(block.get("version", "0.5")), block
    version = None
    for key in ("multiscales", "plate", "well"):
        value = attrs.get(key)
        entry = value[0] if key == "multiscales" and isinstance(value, list) and value else value
        if isinstance(entry, dict) and "version" in entry:
            version = str(entry["version"])
            break
    return version, attrs


def kind_of(attrs: dict[str, Any]) -> str | None:
    """Classify a group from its attributes: "plate", "well", "image", "labels" or None."""
    _, block = ome_attrs(attrs)
    if "plate" in block:
        return "plate"
    if "well" in block:
        return "well"
    if "multiscales" in block:
        return "image"
    if "labels" in block:
        return "labels"
    return None


def _axis_names(raw: Any, ndim: int | None, where: str) -> tuple[str, ...]:
    if raw is None:
        names = DEFAULT_AXES if ndim is None else DEFAULT_AXES[-ndim:]
    else:
        names = tuple(str(a["name"] if isinstance(a, dict) else a).lower() for a in raw)
    unknown = [a for a in names if a not in SUPPORTED_AXES]
    if unknown or len(set(names)) != len(names):
        raise ValueError(
            f"{where}: unsupported axes {list(names)} (expected distinct names from t, c, z, y, x)"
        )
    if "y" not in names or "x" not in names:
        raise ValueError(f"{where}: axes {list(names)} lack 'y' and 'x'")
    return names


def parse_multiscales(attrs: dict[str, Any], where: str, index: int = 0) -> Multiscale:
    """Parse `multiscales[index]`; `where` names the group in error messages."""
    version, block = ome_attrs(attrs)
    entries = block.get("multiscales")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{where}: no 'multiscales' metadata (found attribute keys {sorted(attrs)})")
    if index >= len(entries):
        raise ValueError(f"{where}: multiscales[{index}] requested but only {len(entries)} present")
    entry = entries[index]
    datasets = entry.get("datasets") or []
    if not datasets:
        raise ValueError(f"{where}: multiscales[{index}] has no 'datasets'")
    paths = tuple(str(d["path"]) for d in datasets)
    axes = _axis_names(entry.get("axes"), None, where)
    scales = []
    for d in datasets:
        scale = (1.0,) * len(axes)
        for t in d.get("coordinateTransformations") or []:
            if t.get("type") == "scale" and "scale" in t:
                scale = tuple(float(s) for s in t["scale"])
        scales.append(scale)
    return Multiscale(
        version=str(entry.get("version", version or "")),
        axes=axes,
        paths=paths,
        scales=tuple(scales),
        name=str(entry.get("name", "")),
    )


def channel_labels(attrs: dict[str, Any], n_channels: int) -> list[str]:
    """Channel names from `omero.channels[].label`, falling back to ``c0, c1, ...``."""
    _, block = ome_attrs(attrs)
    channels = (block.get("omero") or {}).get("channels") or []
    labels = [str(c.get("label", "")) if isinstance(c, dict) else "" for c in channels]
    if len(labels) != n_channels or not all(labels):
        return [f"c{i}" for i in range(n_channels)]
    return labels


def parse_plate(attrs: dict[str, Any], where: str) -> PlateMeta:
    """Parse the HCS `plate` block."""
    version, block = ome_attrs(attrs)
    plate = block.get("plate")
    if not isinstance(plate, dict):
        raise ValueError(f"{where}: no 'plate' metadata (found attribute keys {sorted(attrs)})")
    wells = plate.get("wells") or []
    if not wells:
        raise ValueError(f"{where}: plate metadata lists no wells")
    return PlateMeta(
        version=str(plate.get("version", version or "")),
        name=str(plate.get("name", "")),
        rows=tuple(str(r["name"]) for r in plate.get("rows", [])),
        columns=tuple(str(c["name"]) for c in plate.get("columns", [])),
        wells=tuple(str(w["path"]) for w in wells),
        field_count=plate.get("field_count"),
    )


def parse_well(attrs: dict[str, Any], where: str) -> WellMeta:
    """Parse the HCS `well` block."""
    version, block = ome_attrs(attrs)
    well = block.get("well")
    if not isinstance(well, dict):
        raise ValueError(f"{where}: no 'well' metadata (found attribute keys {sorted(attrs)})")
    images = tuple(str(i["path"]) for i in well.get("images", []))
    return WellMeta(version=str(well.get("version", version or "")), images=images)


def labels_list(attrs: dict[str, Any]) -> list[str]:
    """Names listed in a `labels/` group's `labels` attribute."""
    _, block = ome_attrs(attrs)
    return [str(x) for x in block.get("labels", [])]
