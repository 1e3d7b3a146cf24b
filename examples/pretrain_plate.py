"""Pretrain a backbone with cellfm's DINOv2 engine on an OME-Zarr plate.

Writes the offline sample images into an OME-Zarr plate (or uses yours), trains the cpu_tiny recipe,
then reports the held-out patch-probe F1 of the result against a random-initialised backbone.

    python examples/pretrain_plate.py --output runs/example [--plate my.ome.zarr] [--minutes 5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cellfm
from cellfm.data.samples import write_sample_plate
from cellfm.ssl.config import load_ssl_config
from cellfm.ssl.train import pretrain


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="runs/pretrain_example")
    parser.add_argument("--plate", default=None, help="an OME-Zarr plate (default: the sample images)")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke run")
    args = parser.parse_args(argv)
    out = Path(args.output)
    plate = args.plate or write_sample_plate(out / "samples.ome.zarr")
    overrides = []
    if args.tiny:
        from _tiny import TINY

        overrides = TINY
    cfg = load_ssl_config("cpu_tiny", overrides)
    last = pretrain(cfg, [plate], out / "run", time_limit_s=args.minutes * 60)
    model = cellfm.load_backbone(out / "run" / "backbone.safetensors")
    print(
        f"trained {last['step'] + 1} steps, last loss {last['loss']:.3f}; model {out / 'run' / 'backbone.safetensors'}"
    )
    result = {"loss": last["loss"], "steps": last["step"] + 1}
    if not args.tiny:
        from cellfm.evaluation import evaluate_heldout, format_evaluation

        ev = evaluate_heldout(model)
        print(format_evaluation(ev))
        result["evaluation"] = ev
    return result


if __name__ == "__main__":
    main()
