"""`cellfm analyze OUT.h5ad [--controls ...] [--plots DIR]`: normalise, cluster, aggregate, score, plot."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `analyze` subcommand."""
    p = subparsers.add_parser(
        "analyze",
        help="normalise embeddings to controls, cluster (leiden, UMAP), aggregate per well, score, plot",
        description="Writes IN.analyzed.h5ad (rows), IN.wells.h5ad (one row per well) and IN.metrics.json.",
    )
    p.add_argument("input", metavar="OUT.h5ad", help="AnnData from `cellfm embed` (.h5ad or .zarr)")
    p.add_argument("--controls", nargs="+", default=None, metavar="COL[=VALUE]",
                   help="control rows: a boolean column (default 'control') or column=value terms, ORed")  # fmt: skip
    p.add_argument("--plots", default=None, metavar="DIR", help="write UMAP / patch PCA PNGs here")
    p.add_argument("--normalize", default=",".join(("standardize", "mad", "sphering", "tvn")),
                   help="comma-separated methods (standardize, mad, sphering, tvn); '' for none")  # fmt: skip
    p.add_argument("--use-rep", default=None, help="representation to cluster (default X_standardize or X)")
    p.add_argument("--aggregate", choices=("mean", "median"), default="mean", help="per-well aggregation")
    p.add_argument("--label", default=None, help="obs column with labels for kNN / linear-probe accuracy")
    p.add_argument("--treatment", default="treatment", help="obs column naming the treatment (for mAP)")
    p.add_argument("--patch-features", default=None, help="patch-feature store for PCA images (default: uns)")
    p.add_argument("--n-neighbors", type=int, default=15)
    p.add_argument("--resolution", type=float, default=1.0, help="leiden resolution")
    p.add_argument("-o", "--output", default=None,
                   help="rows output (default IN.analyzed.h5ad); OUT.wells.h5ad and OUT.metrics.json go beside it")  # fmt: skip
    p.set_defaults(func=run)


def _stem(path: str) -> str:
    for suffix in (".h5ad", ".zarr"):
        if path.rstrip("/").endswith(suffix):
            return path.rstrip("/")[: -len(suffix)]
    return path


def run(args: argparse.Namespace) -> int:
    """Run the analysis and print the metrics."""
    import json
    import os

    import anndata as ad

    from cellfm.analysis import analyze

    if not os.path.exists(args.input):
        raise FileNotFoundError(f"{args.input}: no such AnnData file")
    adata = ad.read_zarr(args.input) if args.input.rstrip("/").endswith(".zarr") else ad.read_h5ad(args.input)
    methods = [m.strip() for m in args.normalize.split(",") if m.strip()]
    patches = args.patch_features
    if patches is None:
        stored = str(adata.uns.get("cellfm", {}).get("patch_features", "none"))
        patches = stored if stored != "none" and os.path.exists(stored) else None
    adata, wells, report = analyze(adata, args.controls, methods=methods, use_rep=args.use_rep,
                                   aggregate=args.aggregate, label=args.label, treatment=args.treatment,
                                   plots_dir=args.plots, patch_features=patches, n_neighbors=args.n_neighbors,
                                   resolution=args.resolution)  # fmt: skip
    out = args.output or f"{_stem(args.input)}.analyzed.h5ad"
    if not out.endswith(".h5ad"):
        raise ValueError(f"{out}: the analysis output must end in .h5ad")
    stem = _stem(out).removesuffix(".analyzed")
    adata.write_h5ad(out)
    wells.write_h5ad(f"{stem}.wells.h5ad")
    with open(f"{stem}.metrics.json", "w") as f:
        json.dump(report, f, indent=1)
    print(f"{out}: {adata.n_obs} rows, {report['n_clusters']} leiden clusters on {report['use_rep']}; "
          f"{stem}.wells.h5ad: {wells.n_obs} wells")  # fmt: skip
    for key in ("knn_accuracy", "linear_probe_accuracy", "fraction_active"):
        if key in report:
            print(f"  {key}: {report[key]:.3f}")
    if "map_p_value_floor" in report:
        print(f"  smallest possible mAP p-value of this design: {report['map_p_value_floor']:.3g}")
    if "plots" in report:
        print(f"  {len(report['plots'])} plots in {args.plots}")
    return 0
