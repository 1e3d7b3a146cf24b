"""`cellfm eval [--model M] [--json OUT]`: held-out nuclei evaluation of a backbone."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a backbone on the held-out nuclei stack (patch probe F1, retrieval across z)",
    )
    p.add_argument("--model", default=None, help="checkpoint or DINOv2 name (default: the shipped model)")
    p.add_argument(
        "--in-chans", type=int, default=None, help="adapt the patch embedding to this many channels"
    )
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    p.add_argument("--no-random", action="store_true", help="skip the random-initialised baseline")
    p.add_argument(
        "--tta",
        action="store_true",
        help="also report CLS retrieval with the CLS averaged over the 8 dihedral symmetries of each crop",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoints import load_backbone
    from ..evaluation import evaluate_heldout, format_evaluation

    model = load_backbone(args.model, in_chans=args.in_chans)
    chans = model.arch.in_chans if model.arch.channel_strategy == "fixed" else 1
    if chans != 1:
        model = load_backbone(args.model, in_chans=1)
    res = evaluate_heldout(model, with_random=not args.no_random, tta=args.tta)
    print(format_evaluation(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0
