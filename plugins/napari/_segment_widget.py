"""Interactive segmentation widget: scribbles on a Labels layer -> ScribbleSegmenter -> Labels output.

Conventions as in ilastik / convpaint: in the scribble layer 0 = unlabelled, 1 = background, 2.. =
objects; in the result the background is 0, objects keep their scribble value. The scribble layer is
only read (copied), and results go to layers this widget created, never to a layer of the user's.
Live mode retrains and repredicts the shown slice after each painted stroke (debounced, in a worker).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, PushButton, SpinBox
from qtpy.QtCore import QTimer

from cellfm.segment import CLASSIFIERS, ScribbleSegmenter

from ._common import (
    WorkerWidget,
    current_slice,
    labels_combo,
    layer_array,
)
from ._state import get_state

if TYPE_CHECKING:
    import napari

OUTPUT = "segmentation"
PROBABILITY = "probability"
UNCERTAINTY = "uncertainty"
LIVE_DELAY_MS = 400


class SegmentationWidget(WorkerWidget):
    """Pick image, channel axis and scribble layer; Train, Predict (this slice), Predict all slices."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer, labels=True)
        self.image, self.channel_axis = self.image_inputs()
        self.scribbles = labels_combo(viewer, "scribbles")
        self.new_scribbles = PushButton(text="New scribble layer")
        self.classifier = ComboBox(label="classifier", choices=list(CLASSIFIERS), value="random_forest")
        self.min_size = SpinBox(label="min object size", value=0, min=0, max=100_000)
        self.instances = CheckBox(text="split instances (watershed)", value=False)
        self.probability = CheckBox(text="probability image", value=False)
        self.uncertainty = CheckBox(text="uncertainty image (paint where it is bright)", value=True)
        self.live = CheckBox(text="live: retrain and predict while painting", value=False)
        self.train_btn = PushButton(text="Train")
        self.predict_btn = PushButton(text="Predict")
        self.predict_all_btn = PushButton(text="Predict all slices")
        self.segmenter: ScribbleSegmenter | None = None
        self.trainings = 0  # finished trainings (live mode and tests watch it)
        self._outputs: dict[str, object] = {}
        self._watched = None
        self._pending = False
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(LIVE_DELAY_MS)
        self._timer.timeout.connect(self._live_update)
        self.extend(
            [self.image, self.channel_axis, self.scribbles, self.new_scribbles, self.classifier, self.min_size,
             self.instances, self.probability, self.uncertainty, self.live,
             Container(widgets=[self.train_btn, self.predict_btn, self.predict_all_btn], layout="horizontal"),
             self.status]
        )  # fmt: skip
        self.new_scribbles.changed.connect(self.add_scribble_layer)
        self.train_btn.changed.connect(lambda: self.train())
        self.predict_btn.changed.connect(lambda: self.predict(all_slices=False))
        self.predict_all_btn.changed.connect(lambda: self.predict(all_slices=True))
        self.scribbles.changed.connect(self._watch)

    # -- live mode --------------------------------------------------------------------------
    def _watch(self, *_) -> None:
        if self._watched is not None:
            for ev in (self._watched.events.paint, self._watched.events.data):
                ev.disconnect(self._on_paint)
        self._watched = self.scribbles.value
        if self._watched is not None:
            self._watched.events.paint.connect(self._on_paint)
            self._watched.events.data.connect(self._on_paint)

    def _on_paint(self, *_) -> None:
        if self.live.value:
            self._timer.start()  # restarts: one update after the user pauses

    def _live_update(self) -> None:
        if self.busy:
            self._pending = True
            return
        self.train(live=True)

    def _after_job(self) -> None:
        if self._pending:
            self._pending = False
            self._timer.start()

    # -- data in canonical form: channels first (or none), then stack axes, then Y, X -----------
    def _image(self) -> tuple[np.ndarray, int | None]:
        if self.image.value is None:
            raise ValueError("no image layer: open an image (File > Open Sample > cellfm) and pick it")
        data, axis = layer_array(self.image.value, self.channel_axis.value)
        if axis is None:
            return data, None
        return np.moveaxis(data, axis, 0), 0

    def _spatial_shape(self) -> tuple[int, ...]:
        data, axis = self._image()
        return data.shape[1:] if axis is not None else data.shape

    def add_scribble_layer(self, *_) -> None:
        try:
            shape = self._spatial_shape()
        except ValueError as err:
            self.fail(str(err))
            return
        layer = self.viewer.add_labels(np.zeros(shape, np.uint8), name="scribbles")
        layer.brush_size = 5
        layer.mode = "paint"
        self.scribbles.value = layer
        self.status.value = "paint 1 = background, 2.. = objects (0 = unlabelled), then Train or tick live"

    def train(self, live: bool = False) -> None:
        try:
            data, axis = self._image()
            if self.scribbles.value is None:
                raise ValueError(
                    "no scribble layer: click 'New scribble layer' and paint at least two classes"
                )
            scrib = np.array(self.scribbles.value.data, copy=True)  # painting goes on meanwhile
            if scrib.shape != self._spatial_shape():
                raise ValueError(
                    f"scribble layer {self.scribbles.value.name!r} has shape {scrib.shape}, image needs "
                    f"{self._spatial_shape()} (check the channel axis)"
                )
            classes = np.unique(scrib[scrib > 0])
            if len(classes) < 2:
                message = (
                    f"scribbles have class(es) {classes.tolist()} only: paint at least two classes "
                    f"(1 = background, 2.. = objects)"
                )
                if live:  # not an error while the user is still painting
                    self.status.value = f"live: {message}"
                    return
                raise ValueError(message)
            seg = ScribbleSegmenter(
                extractor=get_state(self.viewer).extractor,
                channel_axis=axis,
                classifier=self.classifier.value,
            )
        except ValueError as err:
            self.fail(str(err))
            return

        def job(tick):
            seg.fit(data, scrib, progress=tick)
            return seg

        def done(fitted):
            self.segmenter = fitted
            self.trainings += 1
            self.status.value = f"trained on classes {fitted.classes_.tolist()} ({fitted.feature_set})"
            self.predict(all_slices=False)

        self.run(job, done, "Training")

    def predict(self, all_slices: bool = False) -> None:
        if self.segmenter is None:
            self.fail("train first: paint scribbles and click Train")
            return
        try:
            data, axis = self._image()
            shape = self._spatial_shape()
            if all_slices or len(shape) == 2:
                target, index = data, None
            else:
                target, index = current_slice(self.viewer, data, axis)
        except ValueError as err:
            self.fail(str(err))
            return
        seg, min_size, split = self.segmenter, self.min_size.value, self.instances.value
        want_proba, want_uncertainty = self.probability.value, self.uncertainty.value

        def job(tick):
            labels, proba = seg.predict(target, min_size=min_size, progress=tick, return_proba=True)
            if split:
                labels = seg.predict_instances(
                    target, min_size=min_size, per_slice=len(shape) > 3, semantic=labels
                )
            else:
                labels = np.where(labels == seg.background, 0, labels).astype(labels.dtype)
            k = len(proba)
            extra = {
                PROBABILITY: (1.0 - proba[0]) if want_proba else None,  # any object class
                UNCERTAINTY: ((1.0 - proba.max(0)) * k / (k - 1)) if want_uncertainty else None,
            }
            return labels, extra

        def done(result):
            labels, extra = result
            self._show(labels, extra, shape, index)
            self._after_job()

        self.run(job, done, "Predicting all slices" if all_slices else "Predicting")

    # -- output layers ----------------------------------------------------------------------
    def _show(self, labels: np.ndarray, extra: dict, shape, index) -> None:
        full = labels if index is None else self._into_stack(OUTPUT, labels, shape, index, labels.dtype)
        self._set_layer(OUTPUT, full, "labels")
        for name, arr in extra.items():
            if arr is not None:
                arr = arr.astype(np.float32)
                full = arr if index is None else self._into_stack(name, arr, shape, index, np.float32)
                self._set_layer(name, full, "image")

    def _own(self, name: str):
        """The output layer `name` this widget made, if it is still in the viewer."""
        layer = self._outputs.get(name)
        return layer if layer is not None and layer in self.viewer.layers else None

    def _into_stack(self, name, slice_data, shape, index, dtype) -> np.ndarray:
        layer = self._own(name)
        existing = layer.data if layer is not None else None
        if existing is None or existing.shape != tuple(shape):
            existing = np.zeros(shape, np.int32 if np.dtype(dtype).kind in "iu" else dtype)
        existing = np.array(existing, copy=True)
        existing[index] = slice_data
        return existing

    def _set_layer(self, name: str, data: np.ndarray, kind: str) -> None:
        scale = self.image.value.scale[-data.ndim :] if self.image.value is not None else None
        layer = self._own(name)
        if layer is not None and layer is not self.scribbles.value:
            layer.data = data
        elif kind == "labels":  # a layer of the user's with this name is left alone (napari renames ours)
            self._outputs[name] = self.viewer.add_labels(data, name=name, scale=scale, opacity=0.5)
        else:
            self._outputs[name] = self.viewer.add_image(
                data,
                name=name,
                scale=scale,
                colormap="magma",
                blending="additive",
                contrast_limits=(0.0, 1.0),
            )
