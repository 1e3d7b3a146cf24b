"""Dense patch-token maps per field in a chunked Zarr store, with coordinates, and a patch-level AnnData.

Layout: root attribute `cellfm_patch_features` (feature names, patch size, job signature, fields);
one group per field holding `features` (gh, gw, F) float32; the group's attributes name the plate,
well, field and source, and hold `y` and `x`, the pixel coordinates of the patch centres.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

ATTR = "cellfm_patch_features"


def _name(index: int) -> str:
    return f"{index:06d}"


def create_patch_store(
    path: str | os.PathLike, signature: dict[str, Any], fields: Sequence[dict[str, str]],
    feature_names: list[str], patch: int, overwrite: bool = False,
) -> None:  # fmt: skip
    """Create the store, or check an existing one was made by the same job (for resuming)."""
    path = Path(path)
    header = json.loads(json.dumps({"signature": signature, "feature_names": feature_names, "patch_size": patch,
                                    "fields": list(fields)}, default=str))  # fmt: skip
    if path.exists() and not overwrite:
        try:
            old = dict(zarr.open_group(str(path), mode="r").attrs).get(ATTR)
        except (FileNotFoundError, ValueError) as err:
            raise ValueError(f"{path}: exists and is not a cellfm patch-feature store ({err})") from err
        if old != header:
            raise ValueError(f"{path}: a patch-feature store from another job; pass overwrite (--overwrite)")
        return
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.attrs[ATTR] = header


def write_patch_map(path: str | os.PathLike, index: int, pmap: np.ndarray, info: dict[str, str], patch: int,
                    hw: tuple[int, int]) -> None:  # fmt: skip
    """Store one field's (gh, gw, F) map (rewritten whole if the field is redone)."""
    root = zarr.open_group(str(path), mode="r+")
    gh, gw, f = pmap.shape
    coords = {"y": ((np.arange(gh) + 0.5) * patch).tolist(), "x": ((np.arange(gw) + 0.5) * patch).tolist()}
    attrs = {**info, "height": int(hw[0]), "width": int(hw[1]), "patch_size": patch, **coords}
    # one metadata write per node: creating groups and arrays dominates the cost of small fields
    grp = root.create_group(_name(index), overwrite=True, attributes=attrs)
    arr = grp.create_array(
        "features", shape=pmap.shape, dtype="float32", chunks=(min(gh, 64), min(gw, 64), f)
    )
    arr[...] = pmap.astype(np.float32)


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The store's root attributes (feature names, patch size, fields)."""
    try:
        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: no patch-feature store here") from err
    if ATTR not in attrs:
        raise ValueError(f"{path}: not a cellfm patch-feature store (no {ATTR!r} attribute)")
    return attrs[ATTR]


def read_patch_map(path: str | os.PathLike, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(features (gh, gw, F), y, x, field attributes) of field `index`."""
    root = zarr.open_group(str(path), mode="r")
    name = _name(index)
    if name not in root:
        n = len(read_header(path)["fields"])
        raise KeyError(f"{path}: no patch features for field {index} (store has fields 0..{n - 1})")
    grp = root[name]
    attrs = dict(grp.attrs)
    return grp["features"][...], np.asarray(attrs.pop("y")), np.asarray(attrs.pop("x")), attrs


def patch_anndata(path: str | os.PathLike, fields: Sequence[int] | None = None, stride: int = 1):
    """AnnData with one row per patch (every `stride`-th along y and x) of the chosen fields."""
    import anndata as ad
    import pandas as pd

    header = read_header(path)
    fields = range(len(header["fields"])) if fields is None else fields
    xs, frames = [], []
    for i in fields:
        feats, y, x, info = read_patch_map(path, i)
        feats, y, x = feats[::stride, ::stride], y[::stride], x[::stride]
        gy, gx = np.meshgrid(np.arange(0, len(y) * stride, stride), np.arange(0, len(x) * stride, stride),
                             indexing="ij")  # fmt: skip
        yy, xx = np.meshgrid(y, x, indexing="ij")
        n = gy.size
        frames.append(pd.DataFrame({
            "plate": [info.get("plate", "")] * n, "well": [info.get("well", "")] * n,
            "field": [info.get("field", "")] * n, "source": [info.get("source", "")] * n,
            "field_index": np.full(n, i), "patch_row": gy.ravel(), "patch_col": gx.ravel(),
            "y": yy.ravel(), "x": xx.ravel()}))  # fmt: skip
        xs.append(feats.reshape(n, -1))
    if not xs:
        raise ValueError(f"{path}: no fields selected")
    obs = pd.concat(frames, ignore_index=True)
    obs.index = [f"{f}/{r}/{c}" for f, r, c in zip(obs["field_index"], obs["patch_row"], obs["patch_col"])]
    for col in ("plate", "well", "field", "source"):
        obs[col] = pd.Categorical(obs[col].astype(str))
    var = pd.DataFrame(index=list(header["feature_names"]))
    spatial = obs[["x", "y"]].to_numpy(np.float64)
    return ad.AnnData(X=np.concatenate(xs).astype(np.float32), obs=obs, var=var, obsm={"spatial": spatial},
                      uns={"cellfm_patch_features": {"patch_size": header["patch_size"], "store": str(path)}})  # fmt: skip
