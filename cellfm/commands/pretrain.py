"""`cellfm pretrain DATA... --config NAME --output DIR [--steps N] [key=value ...]`."""

from __future__ import annotations

import argparse
import os


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="self-supervised DINOv2 pretraining (or distillation) on OME-Zarr / Zarr / TIFF stores",
        description="Train a backbone with DINO + iBOT + KoLeo on crops streamed from the stores. "
        "Rerunning the same command resumes from DIR/checkpoint.pt. Multi-process: "
        "torchrun --nproc-per-node N -m cellfm.cli pretrain ...",
    )
    p.add_argument(
        "items",
        nargs="+",
        metavar="DATA|key=value",
        help="OME-Zarr plates / images, Zarr arrays or TIFF files, then config overrides such as "
        "optim.base_lr=1e-3 (anything containing '=' is an override)",
    )
    p.add_argument("--config", default="cpu_tiny", help="recipe name (see `cellfm info`) or YAML path")
    p.add_argument("--output", "-o", required=True, help="run folder (checkpoints, metrics, exports)")
    p.add_argument("--steps", type=int, default=None, help="stop after this many total steps")
    p.add_argument(
        "--minutes", type=float, default=None, help="stop (and checkpoint) after this much training time"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        default=[],
        metavar="key=value",
        help="config overrides, e.g. optim.base_lr=1e-3",
    )
    p.set_defaults(func=run, accepts_extra=True)


def _split(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """argparse cannot tell DATA from key=value overrides: anything with '=' is an override."""
    items = list(args.items) + list(getattr(args, "extra", []))
    return [i for i in items if "=" not in i], [i for i in items if "=" in i]


def run(args: argparse.Namespace) -> int:
    from ..ssl.config import load_ssl_config
    from ..ssl.train import pretrain

    data, overrides = _split(args)
    if not data:
        raise ValueError("no DATA stores given")
    cfg = load_ssl_config(args.config, overrides)
    limit = args.minutes * 60 if args.minutes is not None else None
    last = pretrain(cfg, data, args.output, steps=args.steps, time_limit_s=limit)
    if last and os.environ.get("RANK", "0") == "0":  # under torchrun: the main process reports
        print(f"step {last['step'] + 1}: loss {last['loss']:.4f}; outputs in {args.output}")
    return 0
