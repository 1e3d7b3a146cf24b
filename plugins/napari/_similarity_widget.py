"""Similarity: points clicked on a Points layer drive a cosine-similarity map of patch features."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, PushButton

from cellfm.segment import similarity_map

from ._common import (
    WorkerWidget,
    add_points_for,
    current_slice,
    layer_array,
    points_combo,
)
from ._state import get_state

if TYPE_CHECKING:
    import napari

OUTPUT = "similarity"


class SimilarityWidget(WorkerWidget):
    """Add points on objects of interest; the map updates whenever the points change."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer, labels=True)
        self.image, self.channel_axis = self.image_inputs()
        self.points = points_combo(viewer, "points")
        self.new_points = PushButton(text="New points layer")
        self.reduce = ComboBox(label="combine points", choices=["max", "mean"], value="max")
        self.compute_btn = PushButton(text="Update similarity")
        self.extend([self.image, self.channel_axis, self.points, self.new_points, self.reduce, self.compute_btn,
                     self.status])  # fmt: skip
        self._pending = False
        self._watched = None
        self.computations = 0  # finished similarity maps (tests check there is one per edit)
        self.points.changed.connect(self._watch)
        self.new_points.changed.connect(self.add_points_layer)
        self.compute_btn.changed.connect(lambda: self.compute())
        self._watch()

    def _watch(self, *_):
        if self._watched is not None:
            self._watched.events.data.disconnect(self._on_points)
        self._watched = self.points.value
        if self._watched is not None:
            self._watched.events.data.connect(self._on_points)

    def add_points_layer(self, *_):
        self.points.value = add_points_for(self.viewer, self.image.value, "similarity points", "cyan")

    def _on_points(self, event=None):
        # napari announces each edit twice ("adding", then "added"): react once, to the finished edit
        action = str(getattr(event, "action", "")).lower()
        if action.endswith(("adding", "removing", "changing")):
            return
        if self.busy:  # recompute once the running job ends
            self._pending = True
            return
        self.compute(automatic=True)

    def compute(self, *_, automatic: bool = False) -> None:
        if automatic and (self.points.value is None or len(self.points.value.data) == 0):
            self.status.value = "add points on objects to see what looks like them"
            return
        try:
            if self.image.value is None:
                raise ValueError("no image layer: open an image and pick it")
            if self.points.value is None or len(self.points.value.data) == 0:
                raise ValueError("no points: click 'New points layer' and add points on objects")
            data, axis = layer_array(self.image.value, self.channel_axis.value)
            image, index = current_slice(self.viewer, data, axis)
            pts = np.asarray(self.points.value.data)
            if index and pts.shape[1] > 2:  # keep points on the shown slice
                pts = pts[np.all(np.round(pts[:, -2 - len(index) : -2]) == index, axis=1)]
            pts = pts[:, -2:]
            if len(pts) == 0:
                raise ValueError("no points on the current slice")
        except ValueError as err:
            self.fail(str(err))
            return
        extractor, reduce, ax = (
            get_state(self.viewer).extractor,
            self.reduce.value,
            0 if axis is not None else None,
        )

        def job(tick):
            return similarity_map(extractor, image, pts, ax, reduce)

        def done(sim):
            self.computations += 1
            if OUTPUT in self.viewer.layers and self.viewer.layers[OUTPUT].data.shape == sim.shape:
                self.viewer.layers[OUTPUT].data = sim
            else:
                if OUTPUT in self.viewer.layers:
                    self.viewer.layers.remove(OUTPUT)
                self.viewer.add_image(sim, name=OUTPUT, colormap="inferno", blending="additive",
                                      contrast_limits=(float(sim.min()), 1.0))  # fmt: skip
            if self._pending:
                self._pending = False
                self.compute(automatic=True)

        self.run(job, done, "Similarity")
