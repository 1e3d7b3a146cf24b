"""`cellfm inspect STORE`: what an OME-Zarr / Zarr / TIFF store holds."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `inspect` subcommand."""
    p = subparsers.add_parser("inspect", help="describe an OME-Zarr plate/image, Zarr array or TIFF")
    p.add_argument("store", help="path or fsspec URL")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the description; problems (missing fields) make the exit status 1."""
    from cellfm.data.inspect import describe, format_description

    d = describe(args.store)
    print(json.dumps(d, indent=1) if args.json else format_description(d))
    return 1 if d.get("problems") else 0
