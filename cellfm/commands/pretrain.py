"""`cellfm pretrain DATA... --config NAME --output DIR [--steps N] [key=value ...]`."""

from __future__ import annotations

import argparse
import os


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="self-supervised DINOv2 pretraining (or distillation) on OME-Zarr / Zarr / TIFF stores",
        description="Train a backbone with DINO + iBOT + KoLeo on crops streamed from the stores. "
        "Rerunning the same command resumes from the latest checkpoint in DIR (DIR/checkpoints/ sharded, or DIR/checkpoint.pt). Multi-process: "
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
    p.add_argument("--steps", type=positive_int, default=None, help="stop after this many total steps (> 0)")
    p.add_argument(
        "--minutes",
        type=positive_float,
        default=None,
        help="stop (and checkpoint) after this much training time",
    )
    p.add_argument("--on-bad-data", choices=("skip", "fail"), default=None,
                   help="damaged chunks: skip (default; counted, bad_data.jsonl) or fail (= data.on_bad_data)")  # fmt: skip
    p.add_argument("--nan-policy", choices=("error", "zero", "skip"), default=None,
                   help="NaN/Inf pixels: error (default), zero or skip the crop (= data.nan_policy)")  # fmt: skip
    p.add_argument("--resume-with-changes", default="", metavar="KEY,...",
                   help="resume a run whose config differs in these keys (e.g. optim.base_lr,train.seed)")  # fmt: skip
    p.add_argument(
        "overrides",
        nargs="*",
        default=[],
        metavar="key=value",
        help="config overrides, e.g. optim.base_lr=1e-3",
    )
    p.set_defaults(func=run, accepts_extra=True)


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


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
    for flag, key in ((args.on_bad_data, "data.on_bad_data"), (args.nan_policy, "data.nan_policy")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    cfg = load_ssl_config(args.config, overrides)
    limit = args.minutes * 60 if args.minutes is not None else None
    changes = [k.strip() for k in args.resume_with_changes.split(",") if k.strip()]
    last = pretrain(cfg, data, args.output, steps=args.steps, time_limit_s=limit, resume_with_changes=changes)
    if last and os.environ.get("RANK", "0") == "0":  # under torchrun: the main process reports
        print(f"step {last['step'] + 1}: loss {last['loss']:.4f}; outputs in {args.output}")
    return 0
