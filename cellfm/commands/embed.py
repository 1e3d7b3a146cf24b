"""`cellfm embed STORE... --model MODEL --output OUT.h5ad|OUT.zarr [--level field|tile|cell] ...`."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `embed` subcommand."""
    from cellfm.embed.config import LEVELS

    p = subparsers.add_parser(
        "embed",
        help="embed every field / tile / cell of OME-Zarr plates into an AnnData (.h5ad / .zarr)",
        description="Rerunning an interrupted command resumes it (rows are kept in OUT.parts/ until the end).",
    )
    p.add_argument(
        "stores", nargs="+", metavar="STORE", help="OME-Zarr plates / images, Zarr arrays or TIFFs"
    )
    p.add_argument("--model", default=None, help="checkpoint (.safetensors / .pth) or DINOv2 name "
                   "(default: the model shipped with cellfm)")  # fmt: skip
    p.add_argument("--output", "-o", required=True, help="OUT.h5ad or OUT.zarr")
    p.add_argument("--level", choices=LEVELS, default="field", help="one row per field, tile or cell")
    p.add_argument("--pooling", default=None,
                   help="field/tile: cls | mean; cell: mask | mask_bilinear | crop (default: cls / mask)")  # fmt: skip
    p.add_argument("--labels", default=None, help="labels image name under each field's labels/ (cell level)")
    p.add_argument("--channels", default=None, help="comma-separated channel names to embed, in model order")
    p.add_argument("--metadata", default=None, help="well metadata CSV (well[, plate], treatment, ...)")
    p.add_argument("--patch-features", default=None, metavar="OUT.zarr", help="also store dense patch maps")
    p.add_argument(
        "--image-level", default="0", help="multiscale level to embed (default 0, full resolution)"
    )
    p.add_argument("--tile-size", type=int, default=None, help="tile edge in pixels (default 37 patches)")
    p.add_argument("--overlap", type=int, default=None, help="tile overlap in pixels (default 2 patches)")
    p.add_argument("--crop-size", type=int, default=None, help="cell crop edge for --pooling crop")
    p.add_argument("--min-area", type=int, default=1, help="drop objects smaller than this many pixels")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (mixed precision on CUDA)")
    p.add_argument("--cls-tta", action="store_true",
                   help="CLS averaged over the 8 rot90/flip symmetries of each input (8x the compute)")  # fmt: skip
    p.add_argument("--int8", action="store_true",
                   help="CPU: int8 matmuls in the transformer (about 1.6x faster, features within ~1e-3 cosine)")  # fmt: skip
    p.add_argument(
        "--workers", type=int, default=1, help="processes (a dask LocalCluster) splitting the fields"
    )
    p.add_argument("--scheduler", default=None, help="address of a running dask.distributed scheduler")
    p.add_argument("--on-bad-data", choices=("skip", "fail"), default="skip",
                   help="damaged chunks: skip the field (listed in uns['cellfm']['skipped']) or fail")  # fmt: skip
    p.add_argument("--nan-policy", choices=("error", "zero", "skip"), default="error",
                   help="NaN/Inf pixels: fail (default), replace by 0, or skip the field")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace OUT and start the job again")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Embed, then print the AnnData's size."""
    from cellfm.embed import run_embed

    level = int(args.image_level) if args.image_level.lstrip("-").isdigit() else args.image_level
    options = dict(level=args.level, pooling=args.pooling, labels=args.labels, image_level=level,
                   tile_size=args.tile_size, overlap=args.overlap, crop_size=args.crop_size,
                   min_area=args.min_area, batch_size=args.batch_size, device=args.device,
                   int8=args.int8, cls_tta=args.cls_tta, on_bad_data=args.on_bad_data, nan_policy=args.nan_policy)  # fmt: skip
    if args.channels:
        options["channels"] = [c.strip() for c in args.channels.split(",") if c.strip()]
    client = None
    if args.scheduler:
        from dask.distributed import Client

        client = Client(args.scheduler)
    try:
        path = run_embed(args.stores, args.model, args.output, metadata=args.metadata,
                         patch_features=args.patch_features, workers=args.workers, client=client,
                         overwrite=args.overwrite, progress=not args.no_progress, **options)  # fmt: skip
    finally:
        if client is not None:
            client.close()
    import anndata as ad

    adata = ad.read_h5ad(path, backed="r") if path.suffix == ".h5ad" else ad.read_zarr(path)
    print(f"{path}: {adata.n_obs} rows x {adata.n_vars} features (level {args.level})")
    return 0
