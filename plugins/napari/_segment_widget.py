"""Interactive segmentation widget: scribbles on a Labels layer -> ScribbleSegmenter -> Labels output."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, PushButton, SpinBox

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


class SegmentationWidget(WorkerWidget):
    """Pick image, channel axis and scribble layer; Train, Predict (this slice), Predict all slices."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer, labels=True)
        self.image, self.channel_axis = self.image_inputs()
        self.scribbles = labels_combo(viewer, "scribbles")
        self.new_scribbles = PushButton(text="New scribble layer")
        self.classifier = ComboBox(label="classifier", choices=list(CLASSIFIERS), value="logistic")
        self.min_size = SpinBox(label="min object size", value=0, min=0, max=100_000)
        self.instances = CheckBox(text="split instances (watershed)", value=False)
        self.probability = CheckBox(text="probability image", value=False)
        self.train_btn = PushButton(text="Train")
        self.predict_btn = PushButton(text="Predict")
        self.predict_all_btn = PushButton(text="Predict all slices")
        self.segmenter: ScribbleSegmenter | None = None
        self.extend(
            [self.image, self.channel_axis, self.scribbles, self.new_scribbles, self.classifier, self.min_size,
             self.instances, self.probability,
             Container(widgets=[self.train_btn, self.predict_btn, self.predict_all_btn], layout="horizontal"),
             self.status]
        )  # fmt: skip
        self.new_scribbles.changed.connect(self.add_scribble_layer)
        self.train_btn.changed.connect(self.train)
        self.predict_btn.changed.connect(lambda: self.predict(all_slices=False))
        self.predict_all_btn.changed.connect(lambda: self.predict(all_slices=True))

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
        self.status.value = "paint class 1 = background, 2.. = objects, then Train"

    def train(self, *_) -> None:
        try:
            data, axis = self._image()
            if self.scribbles.value is None:
                raise ValueError(
                    "no scribble layer: click 'New scribble layer' and paint at least two classes"
                )
            scrib = np.asarray(self.scribbles.value.data)
            if scrib.shape != self._spatial_shape():
                raise ValueError(
                    f"scribble layer {self.scribbles.value.name!r} has shape {scrib.shape}, image needs "
                    f"{self._spatial_shape()} (check the channel axis)"
                )
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
            self.status.value = f"trained on classes {fitted.classes_.tolist()}"
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
        seg, min_size, split, want_proba = (
            self.segmenter,
            self.min_size.value,
            self.instances.value,
            self.probability.value,
        )

        def job(tick):
            proba = seg.predict_proba(target, progress=tick) if want_proba else None
            if split:
                labels = seg.predict_instances(target, min_size=min_size, per_slice=len(shape) > 3)
            else:
                labels = seg.predict(target, min_size=min_size)
            return labels, (proba[-1] if proba is not None else None)

        def done(result):
            labels, proba = result
            self._show(labels, proba, shape, index)

        self.run(job, done, "Predicting all slices" if all_slices else "Predicting")

    def _show(self, labels: np.ndarray, proba: np.ndarray | None, shape, index) -> None:
        full = labels if index is None else self._into_stack(OUTPUT, labels, shape, index, labels.dtype)
        self._set_layer(OUTPUT, full, "labels")
        if proba is not None:
            pfull = proba if index is None else self._into_stack(PROBABILITY, proba, shape, index, np.float32)
            self._set_layer(PROBABILITY, pfull, "image")

    def _into_stack(self, name, slice_data, shape, index, dtype) -> np.ndarray:
        existing = self.viewer.layers[name].data if name in self.viewer.layers else None
        if existing is None or existing.shape != tuple(shape):
            existing = np.zeros(shape, np.int32 if np.dtype(dtype).kind in "iu" else dtype)
        existing = np.array(existing, copy=True)
        existing[index] = slice_data
        return existing

    def _set_layer(self, name: str, data: np.ndarray, kind: str) -> None:
        scale = self.image.value.scale[-data.ndim :] if self.image.value is not None else None
        if name in self.viewer.layers:
            self.viewer.layers[name].data = data
        elif kind == "labels":
            self.viewer.add_labels(data, name=name, scale=scale, opacity=0.5)
        else:
            self.viewer.add_image(data, name=name, scale=scale, colormap="magma", blending="additive")
