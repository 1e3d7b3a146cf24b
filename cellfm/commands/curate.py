"""`cellfm curate STORE... -o DIR [--model M] [--level field|tile] [--tile-size N] [--controls key=value ...]`."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `curate` subcommand."""
    from cellfm.curate.config import LEVELS, CurateConfig, QCThresholds

    d, q = CurateConfig(), QCThresholds()
    p = subparsers.add_parser(
        "curate",
        help="QC, deduplicate and rebalance the fields / tiles of stores (DINOv2-style data curation)",
        description="Writes DIR/curation.parquet (one row per field / tile: keep, reason, cluster, weight), "
        "curation.h5ad, index.faiss and report.md. Rerunning an interrupted command resumes the embedding. "
        "Train on the result with `cellfm pretrain ... data.curation=DIR`.",
    )
    p.add_argument(
        "stores", nargs="+", metavar="STORE", help="OME-Zarr plates / images, Zarr arrays or TIFFs"
    )
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="output folder")
    p.add_argument("--model", default=None, help="checkpoint or DINOv2 name (default: the shipped model)")
    p.add_argument("--level", choices=LEVELS, default=d.level, help="one row per field or per tile")
    p.add_argument("--tile-size", type=int, default=None, help="tile edge in pixels (default 37 patches)")
    p.add_argument("--metadata", default=None, help="well metadata CSV (well[, plate], treatment, ...)")
    p.add_argument("--controls", nargs="+", default=[], metavar="KEY=VALUE",
                   help="rows matching all of these (obs / metadata columns) are controls")  # fmt: skip
    p.add_argument("--max-control-fraction", type=float, default=None,
                   help="cap controls at this fraction of the kept rows (reason 'cap')")  # fmt: skip
    p.add_argument("--duplicate-threshold", type=float, default=d.duplicate_threshold,
                   help="shift/zoom-aligned band-pass correlation above which a candidate pair is a duplicate "
                        f"(default {d.duplicate_threshold})")  # fmt: skip
    p.add_argument("--candidate-threshold", type=float, default=d.candidate_threshold,
                   help="descriptor cosine above which a nearest-neighbour pair is checked for duplication "
                        f"(default {d.candidate_threshold})")  # fmt: skip
    p.add_argument("--sample-fraction", type=float, default=d.sample_fraction,
                   help="size of the balanced draw the weights describe, as a fraction of the kept rows")  # fmt: skip
    p.add_argument("--kmeans-levels", default=None, help="clusters per level, finest first, e.g. 1000,50")
    p.add_argument("--min-foreground", type=float, default=q.min_foreground)
    p.add_argument("--min-contrast", type=float, default=q.min_contrast)
    p.add_argument("--min-focus", type=float, default=q.min_focus)
    p.add_argument("--max-saturated", type=float, default=q.max_saturated)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--workers", type=int, default=1, help="processes (a dask LocalCluster) splitting the fields"
    )
    p.add_argument("--scheduler", default=None, help="address of a running dask.distributed scheduler")
    p.add_argument("--overwrite", action="store_true", help="replace an existing curation in DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_controls(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--controls {item!r}: expected KEY=VALUE (e.g. treatment=DMSO)")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def run(args: argparse.Namespace) -> int:
    """Curate, then print the counts."""
    from cellfm.curate import CurateConfig, QCThresholds, curate
    from cellfm.curate.table import summary

    qc = QCThresholds(min_foreground=args.min_foreground, min_contrast=args.min_contrast,
                      min_focus=args.min_focus, max_saturated=args.max_saturated)  # fmt: skip
    levels = [int(v) for v in args.kmeans_levels.split(",")] if args.kmeans_levels else None
    cfg = CurateConfig(level=args.level, tile_size=args.tile_size, batch_size=args.batch_size, device=args.device,
                       qc=qc, duplicate_threshold=args.duplicate_threshold,
                       candidate_threshold=args.candidate_threshold, sample_fraction=args.sample_fraction,
                       kmeans_levels=levels, controls=parse_controls(args.controls),
                       max_control_fraction=args.max_control_fraction)  # fmt: skip
    client = None
    if args.scheduler:
        from dask.distributed import Client

        client = Client(args.scheduler)
    try:
        table = curate(args.stores, args.output, args.model, config=cfg, metadata=args.metadata,
                       workers=args.workers, client=client, overwrite=args.overwrite,
                       progress=not args.no_progress)  # fmt: skip
    finally:
        if client is not None:
            client.close()
    counts = summary(table)
    print(f"{args.output}: kept {counts['kept']} of {counts['total']} {args.level}s "
          f"({', '.join(f'{k} {v}' for k, v in counts.items() if k not in ('kept', 'total'))})")  # fmt: skip
    return 0
