"""Continue pretraining an official DINOv2 checkpoint on 5-channel (Cell Painting-like) data.

The RGB patch-embedding filters are adapted to 5 channels (mean filter x 3/5), fresh DINO/iBOT heads
are added, and the run continues with the train/cellpainting5 recipe. The official checkpoint must be
on disk (cellfm never downloads): pass --checkpoint dinov2_vits14_pretrain.pth, or put it in the torch
hub cache and use the name dinov2_vits14.

    python examples/continue_from_dinov2.py --checkpoint dinov2_vits14_pretrain.pth --plate cp.ome.zarr
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import cellfm
from cellfm.ssl.config import load_ssl_config
from cellfm.ssl.train import pretrain

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]


def five_channel_plate(out: Path) -> str:
    """A 5-channel plate from the sample images (each channel a different filtering of the field)."""
    from skimage import filters

    from cellfm.data.samples import training_images
    from cellfm.data.writer import create_plate, write_image

    images = list(training_images(timelapse_frames=2).values())
    wells = {f"A/{i + 1}": ["0"] for i in range(len(images))}
    root = create_plate(str(out), "cp5", wells, "0.4", mode="w")
    for (well, _), img in zip(wells.items(), images):
        f = img.astype(np.float32)
        chans = [
            f,
            filters.gaussian(f, 2, preserve_range=True),
            filters.sobel(f) * 8,
            f.max() - f,
            np.sqrt(f) * 64,
        ]
        data = np.stack([np.clip(c, 0, 65535) for c in chans]).astype(np.uint16)
        write_image(root[well].require_group("0"), data, CHANNELS, "0.4", chunk=256, min_level_size=128)
    return str(out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="official DINOv2 .pth or a name in the hub cache")
    parser.add_argument(
        "--plate", default=None, help="5-channel OME-Zarr plate (default: built from samples)"
    )
    parser.add_argument("--output", default="runs/continue_dinov2")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.output)
    plate = args.plate or five_channel_plate(out / "cp5.ome.zarr")
    overrides = [f"model.pretrained={args.checkpoint}", "data.channels=[DNA, ER, RNA, AGP, Mito]"]
    if args.tiny:
        from _tiny import TINY

        size = [
            o
            for o in TINY
            if not o.startswith(("model.size", "model.depth", "model.patch_size", "model.img_size"))
        ]
        overrides += size + ["model.patch_size=14", "model.img_size=56", "augment.crops.global_crops_size=56",
                             "augment.crops.local_crops_size=28", "augment.masking.patch_size=14",
                             "data.field_crop_size=64"]  # fmt: skip
    cfg = load_ssl_config("train/cellpainting5", overrides)
    last = pretrain(cfg, [plate], out / "run", steps=args.steps)
    model = cellfm.load_backbone(out / "run" / "backbone.safetensors")
    print(
        f"continued {last['step'] + 1} steps from {args.checkpoint}: {model.arch.in_chans} channels "
        f"{model.cellfm_metadata['channel_names']}, last loss {last['loss']:.3f}"
    )
    return {
        "in_chans": model.arch.in_chans,
        "channels": model.cellfm_metadata["channel_names"],
        "loss": last["loss"],
    }


if __name__ == "__main__":
    main()
