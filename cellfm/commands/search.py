"""`cellfm search INDEX_OR_DIR --query IMAGE_OR_CELL [-k K] [-o OUT]`."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `search` subcommand."""
    p = subparsers.add_parser(
        "search",
        help="the fields / tiles / cells of an embedded store most similar to a query image",
        description="INDEX_OR_DIR is a `cellfm curate` folder or a `cellfm embed` .h5ad / .zarr. The query is "
        "embedded like the store, under 8 rotations / flips.",
    )
    p.add_argument("index", metavar="INDEX_OR_DIR")
    p.add_argument("--query", required=True, help="image file (.tif, .png, .npy ...)")
    p.add_argument("--at", default=None, metavar="Y,X", help="search with the crop centred here (a cell)")
    p.add_argument(
        "--crop",
        type=int,
        default=None,
        help="crop edge in pixels for --at (default 64; 512 around a cell of a cell store)",
    )
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--model", default=None, help="the model the store was embedded with (default: shipped)")
    p.add_argument("--no-rotations", action="store_true", help="do not try the 8 rotations / flips")
    p.add_argument(
        "--output", "-o", default=None, metavar="OUT", help="folder for results.csv and montage.png"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Search and print the table."""
    from cellfm.curate.retrieval import read_query, search, write_results

    at = None
    if args.at:
        try:
            at = tuple(float(v) for v in args.at.split(","))
            assert len(at) == 2
        except (ValueError, AssertionError):
            raise ValueError(f"--at {args.at!r}: expected Y,X (two numbers)") from None
    result = search(args.index, args.query, args.k, model=args.model, at=at, crop=args.crop,
                    rotations=not args.no_rotations)  # fmt: skip
    cols = [c for c in ("rank", "score", "id", "source", "y", "x", "keep", "reason") if c in result.columns]
    print(result[cols].to_string(index=False))
    if args.output:
        paths = write_results(result, read_query(args.query, at, args.crop), args.index, args.output)
        print("wrote", ", ".join(str(p) for p in paths))
    return 0
