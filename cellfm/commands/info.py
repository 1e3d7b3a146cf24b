"""`cellfm info`: versions, threads, devices, backends, configs and models (for bug reports)."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show versions, devices, backends, configs and models")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..info import collect, format_info

    info = collect()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
