"""Microscope files read through bioio (.nd2, .czi, .lif): scenes become plate fields, z/t one plane.

The readers are an optional extra (`pip install 'cellfm[bioio]'`: bioio with bioio-nd2, bioio-czi and
bioio-lif). A file's scenes (ND2 positions, CZI scenes, LIF images) map to fields in one of two ways:

- ``fields`` (default): the file is one well, read from its name (`--pattern`, else the first token
  like ``A01`` / ``b3``), and its scenes are fields. A pattern with a ``field`` group names the field
  of a single-scene file.
- ``wells``: each scene's name holds its well (``A1``, ``B03-2``, ``.../C/4/R1``).

Without a field group, a well's scenes are its fields 0, 1, ... in the order of the (sorted) files and
their scenes.

Each field is one (C, Y, X) plane: timepoint `timepoint` (default 0) and z plane `plane` (default 0),
or the maximum over z (`max_project`). Channel names and the pixel size come from the file's metadata
(bioio reports micrometres)."""

from __future__ import annotations

import importlib
import logging
import os
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from cellfm.data.stores import BIOIO_SUFFIXES
from cellfm.data.tiff_ingest import (
    TiffRecord,
    compile_pattern,
    field_from_groups,
    normalise_well,
    well_from_groups,
)

log = logging.getLogger(__name__)
_PLUGINS = {".nd2": "bioio_nd2", ".czi": "bioio_czi", ".lif": "bioio_lif"}
INSTALL_HINT = "pip install 'cellfm[bioio]'"
# a well token not glued to other letters or digits: A01, b3, C-4, D/12 (also path parts .../E/5/...)
_WELL_TOKEN = re.compile(r"(?<![A-Za-z0-9])(?P<well>[A-Pa-p][/_-]?\d{1,2})(?!\d)")
SCENE_MODES = ("fields", "wells")


class ReaderNotInstalled(ImportError):
    """The bioio reader a file needs is not installed (the message names the file and the pip command)."""


def is_bioio_file(path: object) -> bool:
    """True when `path` names a file the bioio readers convert (.nd2, .czi, .lif) by its suffix."""
    return str(path).lower().endswith(BIOIO_SUFFIXES)


@dataclass(frozen=True)
class SceneRef:
    """One scene of a bioio file and the plane it converts to (z `plane`, or the max over z)."""

    file: str
    scene: int
    name: str
    plane: int = 0
    timepoint: int = 0
    max_project: bool = False

    def __str__(self) -> str:
        return f"{self.file} (scene {self.scene} {self.name!r})"


@dataclass(frozen=True)
class SceneInfo:
    """What a scene holds, from metadata only: sizes per dimension letter (T, C, Z, Y, X, ...)."""

    index: int
    name: str
    sizes: dict
    dtype: np.dtype
    channels: tuple[str, ...]
    pixel_size: tuple[float, float] | None


def open_image(path: str):
    """A `bioio.BioImage` of `path` with the plugin its suffix needs; a clear error when not installed."""
    suffix = os.path.splitext(str(path))[1].lower()
    module = _PLUGINS.get(suffix)
    if module is None:
        raise ValueError(f"{path}: not a bioio file (expected one of {', '.join(BIOIO_SUFFIXES)})")
    try:
        bioio = importlib.import_module("bioio")
        plugin = importlib.import_module(module)
    except ImportError as err:
        raise ReaderNotInstalled(
            f"{path}: reading {suffix} files needs bioio and {module.replace('_', '-')} "
            f"({err.name or err} is not installed): {INSTALL_HINT}"
        ) from None
    try:
        return bioio.BioImage(path, reader=plugin.Reader)
    except FileNotFoundError:
        raise
    except Exception as err:  # the plugins raise their own types for corrupt or foreign files
        raise ValueError(f"{path}: cannot read it as a {suffix} file ({type(err).__name__}: {err})") from err


def _pixel_size(sizes) -> tuple[float, float] | None:
    y, x = getattr(sizes, "Y", None), getattr(sizes, "X", None)
    if not x or x <= 0:
        return None
    return (float(y) if y and y > 0 else float(x)), float(x)


@lru_cache(maxsize=64)
def scan(path: str) -> tuple[SceneInfo, ...]:
    """Every scene of `path` (metadata only, cached per path)."""
    image = open_image(path)
    infos = []
    for index, name in enumerate(image.scenes):
        image.set_scene(index)
        sizes = dict(zip(image.dims.order, image.dims.shape))
        if sizes.get("S", 1) > 1:
            raise ValueError(f"{path} scene {name!r}: RGB samples (S={sizes['S']}) are not supported")
        infos.append(SceneInfo(index, str(name), sizes, np.dtype(image.dtype),
                               tuple(str(c) for c in image.channel_names), _pixel_size(image.physical_pixel_sizes)))  # fmt: skip
    return tuple(infos)


def _info(ref: SceneRef) -> SceneInfo:
    infos = scan(ref.file)
    if not 0 <= ref.scene < len(infos):
        raise ValueError(f"{ref.file}: no scene {ref.scene} (the file has {len(infos)})")
    return infos[ref.scene]


def scene_info(ref: SceneRef) -> tuple[tuple[int, int, int], np.dtype, list[str]]:
    """((C, Y, X), dtype, channel names) of the plane `ref` converts to, without reading pixels."""
    info = _info(ref)
    return (info.sizes.get("C", 1), info.sizes["Y"], info.sizes["X"]), info.dtype, list(info.channels)


def scene_pixel_size(ref: SceneRef) -> tuple[float, float] | None:
    """(y, x) micrometres per pixel from the file's metadata, else None."""
    return _info(ref).pixel_size


def read_scene(ref: SceneRef) -> np.ndarray:
    """The (C, Y, X) pixels of `ref`: its timepoint, and its z plane or the maximum over z."""
    image = open_image(ref.file)
    image.set_scene(ref.scene)
    if ref.max_project:
        return np.asarray(image.get_image_data("CZYX", T=ref.timepoint)).max(axis=1)
    return np.asarray(image.get_image_data("CYX", T=ref.timepoint, Z=ref.plane))


def _check_planes(infos: tuple[SceneInfo, ...], path: str, plane: int | None, timepoint: int | None,
                  max_project: bool) -> None:  # fmt: skip
    """Out-of-range --plane / --timepoint is an error; an unchosen z or t is a warning (once per file)."""
    n_z = max(info.sizes.get("Z", 1) for info in infos)
    n_t = max(info.sizes.get("T", 1) for info in infos)
    for info in infos:
        where = f"{path} scene {info.name!r}"
        if plane is not None and not 0 <= plane < info.sizes.get("Z", 1):
            raise ValueError(
                f"{where}: --plane {plane} is out of range; it has {info.sizes.get('Z', 1)} z plane(s)"
            )
        if timepoint is not None and not 0 <= timepoint < info.sizes.get("T", 1):
            raise ValueError(
                f"{where}: --timepoint {timepoint} is out of range; it has {info.sizes.get('T', 1)} timepoint(s)"
            )
    if n_z > 1 and plane is None and not max_project:
        log.warning("%s: %d z planes, converting plane 0 (choose with --plane N or --max-project)", path, n_z)
    if n_t > 1 and timepoint is None:
        log.warning("%s: %d timepoints, converting timepoint 0 (choose with --timepoint N)", path, n_t)


def _scene_well(name: str, path: str) -> str:
    m = _WELL_TOKEN.search(name)
    if not m:
        raise ValueError(f"{path}: scene {name!r} names no well (e.g. 'A1', 'B03-2'); with one file per well "
                         "use --scenes fields and put the well in the file name")  # fmt: skip
    return normalise_well(m.group("well"), f"{path} scene {name!r}")


def records_from_files(
    files: list[str],
    pattern: str | None = None,
    scenes: str = "fields",
    plane: int | None = None,
    timepoint: int | None = None,
    max_project: bool = False,
) -> list[TiffRecord]:
    """One record per scene of the .nd2/.czi/.lif `files`, its path a `SceneRef` (see the module doc).

    All scenes must carry the same channel names: a plate has one channel list."""
    if scenes not in SCENE_MODES:
        raise ValueError(f"scenes mode {scenes!r}: expected one of {SCENE_MODES}")
    if max_project and plane is not None:
        raise ValueError("give --plane N or --max-project, not both")
    regex = compile_pattern(pattern) if pattern else _WELL_TOKEN
    records, reference = [], None
    well_counts: dict[str, int] = {}  # fields numbered per well across all files
    repeated = sorted({os.path.abspath(f) for f in files if files.count(f) > 1})
    if repeated:
        raise ValueError(f"files given twice: {repeated[:3]}")
    for path in files:
        infos = scan(path)
        for info in infos:
            if reference is None:
                reference = (path, info)
            elif info.channels != reference[1].channels:
                raise ValueError(f"{path} scene {info.name!r} has channels {list(info.channels)}, but "
                                 f"{reference[0]} scene {reference[1].name!r} has {list(reference[1].channels)}")  # fmt: skip
        _check_planes(infos, path, plane, timepoint, max_project)
        m = regex.search(os.path.basename(path))
        groups = m.groupdict() if m else {}
        for info in infos:
            if scenes == "wells":
                well = _scene_well(info.name, path)
                field = str(well_counts.get(well, 0))
                well_counts[well] = int(field) + 1
            else:
                if not m:
                    raise ValueError(f"{path}: no well in the file name (pattern {regex.pattern!r}); name the file "
                                     "after its well, give --pattern, or if its scenes are wells --scenes wells")  # fmt: skip
                well = well_from_groups(groups, path)
                if groups.get("field") and len(infos) > 1:
                    raise ValueError(f"{path}: the pattern gives a field, but the file has {len(infos)} scenes "
                                     "(its scenes are its fields); drop the field group")  # fmt: skip
                field = field_from_groups(groups) if groups.get("field") else str(well_counts.get(well, 0))
                well_counts[well] = well_counts.get(well, 0) + 1
            ref = SceneRef(path, info.index, info.name, plane or 0, timepoint or 0, max_project)
            records.append(TiffRecord(ref, groups.get("plate") or "", well, field, None))  # type: ignore[arg-type]
    return records
