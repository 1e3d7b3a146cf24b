"""`cellfm demo [--output DIR] [--train-minutes M]`: the whole library on the offline sample images."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="sample images -> OME-Zarr plate -> (pretrain) -> per-cell AnnData -> clusters, "
        "segmentation, report",
    )
    p.add_argument("--output", "-o", default="cellfm-demo", help="output folder (default: cellfm-demo)")
    p.add_argument("--train-minutes", type=float, default=2.0,
                   help="minutes of continued pretraining of the default model (0 to skip)")  # fmt: skip
    p.add_argument("--model", default=None, help="start from this checkpoint instead of the default model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    s = run_demo(args.output, args.train_minutes, args.model)
    seg = s["segmentation"]["foreground_f1"]
    probe = s["heldout_evaluation"]["patch_probe_f1"]
    print(
        f"cellfm demo: {s['cells']} cells in {s['leiden_clusters']} clusters; segmentation F1 {seg:.3f}; "
        f"patch probe F1 {probe['model']:.3f} (random init {probe['random_init']:.3f}, raw pixels "
        f"{probe['raw_pixels']:.3f}); report in {args.output}/report/report.md"
    )
    return 0
