"""Distil a larger cellfm backbone into a smaller one.

Trains (or takes) a teacher run, then distils it: the teacher's backbone and heads are frozen, the
student learns to match them with the DINO + iBOT losses, and the student's EMA is exported.
The full recipe is configs/distill/vitl14_to_vits14.yaml (ViT-L/14 teacher -> ViT-S/14 student).

    python examples/distill.py --teacher runs/vitl14 --plate plate.ome.zarr --output runs/distilled
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
    parser.add_argument("--teacher", default=None, help="a cellfm run folder (default: train a small one)")
    parser.add_argument("--plate", default=None)
    parser.add_argument("--output", default="runs/distill_example")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.output)
    plate = args.plate or write_sample_plate(out / "samples.ome.zarr")
    base = []
    if args.tiny:
        from _tiny import TINY

        base = TINY
    teacher = args.teacher
    if teacher is None:  # a deeper teacher trained briefly on the same data
        teacher = str(out / "teacher")
        pretrain(load_ssl_config("cpu_tiny", base + ["model.depth=4"]), [plate], teacher, steps=args.steps)
    cfg = load_ssl_config("cpu_tiny", base + ["model.depth=2", "distillation.enabled=true",
                                              f"distillation.teacher_checkpoint={teacher}"])  # fmt: skip
    last = pretrain(cfg, [plate], out / "student", steps=args.steps)
    student = cellfm.load_backbone(out / "student" / "backbone.safetensors")
    print(f"distilled {teacher} into a {student.arch.depth}-block student; last loss {last['loss']:.3f}")
    return {"student_depth": student.arch.depth, "loss": last["loss"]}


if __name__ == "__main__":
    main()
