"""Interactive segmentation with the cellfm backbone: the headless API, then the napari viewer.

Headless: scribbles drawn from the held-out nuclei mask train a classifier on patch features; the
prediction on another slice is scored against the real mask. Viewer (--viewer): the same image and
scribbles open in napari with the cellfm segmentation widget docked.

    python examples/napari_segmentation.py [--viewer]
"""

from __future__ import annotations

import argparse

import numpy as np

import cellfm
from cellfm.data.samples import heldout_nuclei
from cellfm.demo import f1, scribbles_from_mask
from cellfm.segment import ScribbleSegmenter


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    parser.add_argument("--viewer", action="store_true", help="open napari with the widget docked")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    stack, labels = heldout_nuclei()
    backbone = cellfm.load_backbone(args.model)
    seg = ScribbleSegmenter(backbone).fit(stack[28], scribbles_from_mask(labels[28]))
    pred = seg.predict(stack[34]) == 2
    score = f1(pred, labels[34] > 0)
    print(f"foreground F1 on held-out slice 34: {score:.3f}")
    if args.viewer:
        import napari

        viewer = napari.Viewer()
        viewer.add_image(stack, name="nuclei")
        scrib = np.zeros(stack.shape, dtype=np.uint8)
        scrib[28] = scribbles_from_mask(labels[28])
        viewer.add_labels(scrib, name="scribbles")
        viewer.window.add_plugin_dock_widget("cellfm", "Interactive segmentation")
        if not args.tiny:
            napari.run()
        else:
            viewer.close()
    return {"f1": score}


if __name__ == "__main__":
    main()
