"""Embed every cell of a plate into AnnData and analyse it with scanpy.

python examples/embed_and_analyze.py --output runs/embed_example [--plate plate.ome.zarr --labels nuclei]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cellfm.analysis import cluster, plot_umap
from cellfm.data.samples import write_sample_plate
from cellfm.embed import embed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plate", default=None, help="OME-Zarr plate with a labels image (default: samples)")
    parser.add_argument("--labels", default="nuclei")
    parser.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    parser.add_argument("--output", default="runs/embed_example")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.output)
    plate = args.plate or write_sample_plate(out / "samples.ome.zarr", timelapse_frames=1 if args.tiny else 4)
    adata = embed(plate, args.model, out / "cells.h5ad", level="cell", labels=args.labels, min_area=20,
                  overwrite=True, progress=not args.tiny)  # fmt: skip
    cluster(adata, n_neighbors=10)
    plots = plot_umap(adata, out / "plots", colors=("leiden", "well"))
    print(
        f"{adata.n_obs} cells x {adata.n_vars} features, {adata.obs['leiden'].nunique()} Leiden clusters; "
        f"plots: {[p.name for p in plots]}"
    )
    return {
        "cells": adata.n_obs,
        "clusters": int(adata.obs["leiden"].nunique()),
        "plots": [str(p) for p in plots],
    }


if __name__ == "__main__":
    main()
