"""Search by example: the k fields / tiles / cells of an embedded store most similar to a query image.

The query is embedded exactly as the store was (same model, channels, tiling and normalisation: it goes
through `cellfm.embed` as a one-field plate) under the 8 rotations / flips of the square, and each row
scores its best cosine over them, so a rotated or mirrored copy of a field finds that field.

A store of cells (`cellfm embed --level cell`: rows are patch features pooled over each cell's mask) is
searched with a cell: the object of `query_labels` at the clicked point is written as the query's labels image and pooled the way the store pooled its cells."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .dedup import build_index, normalise
from .table import ANNDATA, INDEX

CELL_CONTEXT = 512  # px of context embedded around a query cell (clipped to the image)
RESULT_COLUMNS = ("rank", "score", "id", "source", "plate", "well", "field", "y", "x")


def load_embedding(index_or_dir: str | os.PathLike):
    """(AnnData, faiss index or None) of a `cellfm curate` folder or a `cellfm embed` .h5ad / .zarr."""
    import anndata as ad
    import faiss

    path = Path(index_or_dir)
    if path.is_dir() and (path / ANNDATA).is_file():
        adata = _checked(ad.read_h5ad(path / ANNDATA), path / ANNDATA)
        index = faiss.read_index(str(path / INDEX)) if (path / INDEX).is_file() else None
        return adata, index
    if str(path).endswith(".h5ad") and path.is_file():
        return _checked(ad.read_h5ad(path), path), None
    if str(path).rstrip("/").endswith(".zarr") and path.is_dir():
        return _checked(ad.read_zarr(path), path), None
    raise FileNotFoundError(f"{path}: expected a `cellfm curate` folder (with {ANNDATA}) or a `cellfm embed` "
                            ".h5ad / .zarr output")  # fmt: skip


def _checked(adata, path: Path):
    """`adata` if it holds cellfm embeddings (rows x features X and uns["cellfm"] provenance), else an error."""
    if "cellfm" not in adata.uns or adata.X is None or adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"{path}: no cellfm embeddings in it (X is {adata.n_obs} x {adata.n_vars}, uns keys "
                         f"{sorted(adata.uns)}); make one with `cellfm embed` or `cellfm curate`")  # fmt: skip
    return adata


def read_query(query: Any, at: tuple[float, float] | None = None, crop: int | None = None) -> np.ndarray:
    """A (C, H, W) query from an array or an image file (.npy, .tif, .png ...), optionally the `crop`-px
    window centred at `at` = (y, x) (a clicked cell)."""
    if isinstance(query, str | os.PathLike):
        path = Path(query)
        if not path.is_file():
            raise FileNotFoundError(f"query {path}: no such image file")
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        else:
            from skimage.io import imread

            arr = imread(path)
    else:
        arr = np.asarray(query)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.shape[0] not in (1, 2, 3, 4):
        arr = np.moveaxis(arr, -1, 0)  # an RGB(A) picture
    if arr.ndim != 3:
        raise ValueError(f"query has shape {arr.shape}; expected (H, W) or (C, H, W)")
    if at is not None:
        from cellfm.data.sampler import centred_window

        size = int(crop or 64)
        y, x, py, px = centred_window(at[0], at[1], size, arr.shape[1:])
        arr = np.pad(arr[:, y : y + size, x : x + size], ((0, 0), (0, py), (0, px)))
    return arr


def dihedral(arr: np.ndarray) -> list[np.ndarray]:
    """The 8 rotations by 90 degrees and their mirror images of a (C, H, W) array."""
    out = []
    for flip in (False, True):
        base = arr[:, :, ::-1] if flip else arr
        out += [np.ascontiguousarray(np.rot90(base, k, axes=(1, 2))) for k in range(4)]
    return out


def _stored(value: Any) -> Any:
    """Undo provenance's h5ad cleaning: "none" back to None, arrays back to lists."""
    if isinstance(value, dict):
        return {k: _stored(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [_stored(v) for v in value.tolist()]
    if isinstance(value, list):
        return [_stored(v) for v in value]
    return None if isinstance(value, str) and value == "none" else value


def cell_mask(image: np.ndarray, at: tuple[float, float], labels: Any) -> np.ndarray:
    """(H, W) bool mask of the object of `labels` at `at` = (y, x) of a (C, H, W) image.

    The labels are required: pooling over another segmentation than the store's (an Otsu component was
    tried) found the clicked stardist nucleus first less often than not."""
    h, w = image.shape[1:]
    y, x = int(round(at[0])), int(round(at[1]))
    if not (0 <= y < h and 0 <= x < w):
        raise ValueError(f"query point (y={at[0]:g}, x={at[1]:g}) lies outside the {h}x{w} image")
    if labels is None:
        raise ValueError("the store holds cells (rows pooled over each cell's mask): give the query's labels "
                         "(query_labels=, the segmentation the store was embedded with) so the clicked cell is "
                         "pooled the same way")  # fmt: skip
    labels = np.asarray(labels)
    if labels.shape != (h, w):
        raise ValueError(f"query labels have shape {labels.shape}; expected the image's {(h, w)}")
    if labels[y, x] == 0:
        raise ValueError(f"query labels are 0 (no cell) at (y={y}, x={x}); click inside a labelled cell")
    return labels == labels[y, x]


def _cell_rows(adata, n: int) -> np.ndarray:
    """Rows of a query plate embedded at cell level, in query order (one cell per query field)."""
    wells = adata.obs["well"].astype(str).str[1:].astype(int).to_numpy()
    if len(wells) != n or sorted(wells) != list(range(1, n + 1)):
        raise RuntimeError(f"query cells gave {len(wells)} rows for {n} queries (wells {sorted(wells)})")
    return np.asarray(adata.X, dtype=np.float32)[np.argsort(wells)]


def embed_queries(
    queries: list[np.ndarray], info: dict, model: Any, masks: list[np.ndarray] | None = None
) -> np.ndarray:
    """Embed (C, H, W) arrays as the store was embedded (same tiling / normalisation): field rows, or with
    `masks` one cell row per query, pooled over its mask as the store pooled its cells."""
    from cellfm.data.ngff_labels import write_labels
    from cellfm.data.writer import create_plate, write_image
    from cellfm.embed import embed

    channels = list(info["channels"])
    with tempfile.TemporaryDirectory(prefix="cellfm-search-") as tmp:
        store = str(Path(tmp) / "query.zarr")
        wells = {f"A/{i + 1}": ["0"] for i in range(len(queries))}
        root = create_plate(store, "query", wells, "0.4", mode="w")
        for i, (well, q) in enumerate(zip(wells, queries)):
            if q.shape[0] != len(channels):
                raise ValueError(f"query has {q.shape[0]} channels; the store was embedded with {channels}")
            field = root[well].require_group("0")
            write_image(field, q, channels, "0.4", chunk=256, min_level_size=max(q.shape[1:]))
            if masks is not None:
                write_labels(field, masks[i].astype(np.uint32), "query", "0.4")
        norm = _stored(info.get("normalization"))
        options = dict(channels=channels, tile_size=int(info["tile_size"]), overlap=int(info["overlap"]),
                       normalization=norm if isinstance(norm, dict) else None)  # fmt: skip
        if masks is None:
            return np.asarray(embed(store, model, level="field", **options).X, dtype=np.float32)
        crop = _stored(info.get("crop_size"))
        adata = embed(store, model, level="cell", labels="query", pooling=info.get("pooling") or "mask",
                      crop_size=int(crop) if crop else None, **options)  # fmt: skip
    return _cell_rows(adata, len(queries))


def _check_model(model: Any, info: dict, where: str) -> Any:
    from cellfm.embed.encoder import load_model, model_metadata
    from cellfm.embed.job import model_digest

    net = load_model(model)
    digest = model_digest(net, model_metadata(net))
    if info.get("checkpoint_sha256") and digest != info["checkpoint_sha256"]:
        raise ValueError(f"{where} was embedded with model sha256 {info['checkpoint_sha256']} "
                         f"({info.get('checkpoint')}); the model given has {digest}: pass --model with that checkpoint")  # fmt: skip
    return net


def search(
    index_or_dir: str | os.PathLike,
    query: Any,
    k: int = 10,
    *,
    model: Any = None,
    at: tuple[float, float] | None = None,
    crop: int | None = None,
    rotations: bool = True,
    shift_steps: int = 2,
    query_labels: Any = None,
    loaded: tuple[Any, Any] | None = None,
) -> pd.DataFrame:
    """The `k` rows of an embedded store most similar to `query` (array or image file), best first.

    The query is tried under the 8 rotations / flips (`rotations`) and `shift_steps`^2 sub-patch offsets.
    A cell store (level "cell") needs `at`, the clicked cell, and `query_labels` (its object there); `crop` (default CELL_CONTEXT) is the context embedded around it: the store embedded whole fields, and
    on stardist nuclei a 128 px window around the cell found it first 1 time in 6, the whole 256 px field 6 in 6.
    `loaded`: the store's `load_embedding(index_or_dir)`, when the caller has read it already."""
    adata, index = loaded if loaded is not None else load_embedding(index_or_dir)
    info = dict(adata.uns["cellfm"])
    net = _check_model(model, info, str(index_or_dir))
    cells = info.get("level") == "cell"
    if cells:
        if at is None:
            raise ValueError(
                f"{index_or_dir} holds cells: give the query cell's position (at=(y, x) / --at Y,X)"
            )
        whole = read_query(query)
        mask = cell_mask(whole, at, query_labels)
        size = crop or min(CELL_CONTEXT, *whole.shape[1:])  # no zero padding around a field smaller than that
        arr = np.concatenate([read_query(whole, at, size), read_query(mask[None], at, size)])
    else:
        arr = read_query(query, at, crop)
    variants = dihedral(arr) if rotations else [arr]
    patch = int(info["architecture"]["patch_size"])
    step = max(1, patch // shift_steps)
    offsets = [(dy, dx) for dy in range(0, patch, step) for dx in range(0, patch, step)]
    # Re-pad each variant so that one of them meets the store's patch grid again (a cropped query is
    # shifted against it, and ViT patch tokens are not shift invariant). A cell's mask (the last channel)
    # is padded with zeros, not mirrored.
    n_img = arr.shape[0] - 1 if cells else arr.shape[0]
    images = [
        np.pad(v[:n_img], ((0, 0), (dy, 0), (dx, 0)), mode="reflect") for v in variants for dy, dx in offsets
    ]
    if cells:
        masks = [np.pad(v[n_img] > 0.5, ((dy, 0), (dx, 0))) for v in variants for dy, dx in offsets]
        q = embed_queries(images, info, net, masks=masks)
    else:
        q = embed_queries(images, info, net)
    cur = adata.uns.get("curation", {})
    centre = np.asarray(cur["centre"], np.float32) if "centre" in cur else np.asarray(adata.X).mean(0)
    if index is None:
        index = build_index(normalise(np.asarray(adata.X, dtype=np.float32) - centre))
    qn = normalise(q - centre)
    kk = min(len(adata), max(k * 4, k + 8))
    sims, ids = index.search(qn, kk)
    best: dict[int, float] = {}
    for s_row, i_row in zip(sims, ids):
        for s, i in zip(s_row, i_row):
            if i >= 0 and s > best.get(int(i), -np.inf):
                best[int(i)] = float(s)
    order = sorted(best, key=lambda i: -best[i])[:k]
    obs = adata.obs.iloc[order]
    result = pd.DataFrame({"rank": np.arange(1, len(order) + 1), "score": [best[i] for i in order],
                           "id": obs.index.astype(str)})  # fmt: skip
    for col in obs.columns:
        result[col] = obs[col].to_numpy()
    return result


def result_window(row: pd.Series, info: dict, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(y, x, h, w) of a result row: the curation's window, else the tile / cell crop / field around its centre."""
    if "height" in row and not pd.isna(row["height"]):
        return int(row["y"]), int(row["x"]), int(row["height"]), int(row["width"])
    level = info.get("level", "field")
    if level == "field":
        return 0, 0, shape[0], shape[1]
    size = int(info["tile_size"] if level == "tile" else info.get("crop_size", 64))
    y = int(np.clip(round(float(row["y"]) - size / 2), 0, max(0, shape[0] - size)))
    x = int(np.clip(round(float(row["x"]) - size / 2), 0, max(0, shape[1] - size)))
    return y, x, min(size, shape[0]), min(size, shape[1])


def _thumb(arr: np.ndarray, size: int) -> np.ndarray:
    """The first channel of a (C, h, w) window, percentile-scaled to [0, 1] and resized to size x size."""
    from skimage.transform import resize

    plane = np.asarray(arr[0], dtype=np.float32)
    lo, hi = np.percentile(plane, [0.5, 99.5])
    return resize(np.clip((plane - lo) / max(hi - lo, 1e-6), 0, 1), (size, size), anti_aliasing=True)


def result_thumbnails(result: pd.DataFrame, query: np.ndarray, adata, size: int = 64) -> list[np.ndarray]:
    """(size, size) thumbnails of the (C, H, W) query, then of every result row's window in its store."""
    from cellfm.data.plates import list_fields

    info = dict(adata.uns["cellfm"])
    images = {}
    for uri in info["stores"]:
        images.update({im.source: im for im in list_fields(str(uri), 0)})
    thumbs = [_thumb(query, size)]
    for _, row in result.iterrows():
        source = str(row["source"])
        if source not in images:
            raise FileNotFoundError(f"result {row['id']}: its field {source} is not in the stores the embedding "
                                    f"records ({list(info['stores'])}); were they moved?")  # fmt: skip
        im = images[source]
        y, x, h, w = result_window(row, info, im.shape[1:])
        thumbs.append(_thumb(im.read(y, x, h, w), size))
    return thumbs


def montage_strip(thumbs: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Thumbnails side by side, `gap` pixels apart (zeros between): one (size, n * (size + gap) - gap) image."""
    size = thumbs[0].shape[0]
    out = np.zeros((size, len(thumbs) * (size + gap) - gap), dtype=np.float32)
    for i, t in enumerate(thumbs):
        out[:, i * (size + gap) : i * (size + gap) + size] = t
    return out


def write_results(
    result: pd.DataFrame, query: np.ndarray, index_or_dir: str | os.PathLike, out: str | os.PathLike
) -> list[Path]:
    """`out/results.csv` and `out/montage.png` (the query, then the results with their scores)."""
    from cellfm.atomic import atomic_write

    from .report import montage

    adata, _ = load_embedding(index_or_dir)
    thumbs = result_thumbnails(result, query, adata)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv = atomic_write(out / "results.csv", lambda tmp: result.to_csv(tmp, index=False))
    titles = ["query"] + [f"{int(r['rank'])}: {r['score']:.3f}" for _, r in result.iterrows()]
    png = montage([thumbs], ["  |  ".join(titles)], out / "montage.png")  # one row of thumbnails
    return [csv, out / png]
