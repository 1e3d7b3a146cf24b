"""The `cellfm` command. Each subcommand lives in `cellfm/commands/<name>.py` and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# One module per subcommand, in the order `cellfm --help` lists them.
COMMANDS = (
    "info",
    "inspect",
    "convert",
    "pretrain",
    "embed",
    "curate",
    "search",
    "analyze",
    "export_profiles",
    "eval",
    "demo",
    "bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellfm", description="DINOv2 foundation models for multi-channel microscopy"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"cellfm.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"cellfm.commands.{name}":
                continue  # not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Commands that take trailing key=value overrides set `accepts_extra`; argparse cannot place
    # positionals that follow options after a nargs="+" positional, so collect them here.
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .atomic import WriteFailed
    from .locking import OutputLocked

    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, KeyError, OutputLocked, WriteFailed) as err:
        # Bad input: one clear line instead of a traceback (use -v for the traceback).
        if args.verbose:
            raise
        print(f"cellfm {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
