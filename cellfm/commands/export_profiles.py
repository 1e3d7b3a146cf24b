"""`cellfm export-profiles IN.h5ad -o OUT.parquet|.csv [--level cell|well]`: a cytomining profile table."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `export-profiles` subcommand."""
    p = subparsers.add_parser(
        "export-profiles",
        help="write embeddings as a pycytominer / copairs profile table (Metadata_* columns, then features)",
        description="Columns: Metadata_Plate, Metadata_Well (A01), Metadata_Site (cell level), "
        "Metadata_<col> for every other obs column, then the features.",
    )
    p.add_argument("input", metavar="IN.h5ad", help="AnnData from `cellfm embed` or `cellfm analyze`")
    p.add_argument("-o", "--output", required=True, help="OUT.parquet, OUT.csv or OUT.csv.gz")
    p.add_argument("--level", choices=("cell", "well"), default="cell",
                   help="cell: one row per AnnData row (cell, tile or field); well: aggregated per well")  # fmt: skip
    p.add_argument("--rep", default=None, help="features: X (default) or an obsm key such as X_standardize")
    p.add_argument("--aggregate", choices=("mean", "median"), default="mean", help="well aggregation")
    p.add_argument("--feature-prefix", default="", help="prefix for feature columns (e.g. Cells_)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read the AnnData, build the table, write it, print its size."""
    import os

    import anndata as ad

    from cellfm.analysis.profiles import profile_table, write_profiles

    if not os.path.exists(args.input):
        raise FileNotFoundError(f"{args.input}: no such AnnData file")
    adata = ad.read_zarr(args.input) if args.input.rstrip("/").endswith(".zarr") else ad.read_h5ad(args.input)
    table = profile_table(adata, args.level, rep=args.rep, aggregate=args.aggregate,
                          feature_prefix=args.feature_prefix)  # fmt: skip
    write_profiles(table, args.output)
    n_meta = sum(c.startswith("Metadata_") for c in table.columns)
    print(f"{args.output}: {len(table)} {args.level} profiles, {n_meta} Metadata_ columns, "
          f"{table.shape[1] - n_meta} features")  # fmt: skip
    return 0
