"""Feature explorer: PCA of patch features as an RGB layer, and k-means clusters as Labels (current slice)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import Container, PushButton, SpinBox

from cellfm.segment import cluster_patches, pca_rgb

from ._common import WorkerWidget, current_slice, layer_array
from ._state import get_state

if TYPE_CHECKING:
    import napari


class FeatureExplorerWidget(WorkerWidget):
    """Show what the backbone sees: PCA-to-RGB of patch features, or unsupervised patch clusters."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer, labels=True)
        self.image, self.channel_axis = self.image_inputs()
        self.k = SpinBox(label="clusters", value=4, min=2, max=64)
        self.pca_btn = PushButton(text="PCA to RGB")
        self.cluster_btn = PushButton(text="Cluster patches")
        self.extend(
            [self.image, self.channel_axis, self.k,
             Container(widgets=[self.pca_btn, self.cluster_btn], layout="horizontal"), self.status]
        )  # fmt: skip
        self.pca_btn.changed.connect(self.pca)
        self.cluster_btn.changed.connect(self.cluster)

    def _slice(self) -> tuple[np.ndarray, int | None]:
        if self.image.value is None:
            raise ValueError("no image layer: open an image and pick it")
        data, axis = layer_array(self.image.value, self.channel_axis.value)
        image, _ = current_slice(self.viewer, data, axis)
        return image, (0 if axis is not None else None)

    def _start(self, fn, name: str, kind: str, desc: str) -> None:
        try:
            image, axis = self._slice()
        except ValueError as err:
            self.fail(str(err))
            return
        extractor = get_state(self.viewer).extractor

        def job(tick):
            return fn(extractor, image, axis)

        def done(result):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            if kind == "labels":
                self.viewer.add_labels(result, name=name, opacity=0.5)
            else:
                self.viewer.add_image(result, name=name, rgb=True, opacity=0.7)

        self.run(job, done, desc)

    def pca(self, *_) -> None:
        self._start(lambda ex, im, ax: pca_rgb(ex, im, ax), "feature PCA", "image", "PCA of features")

    def cluster(self, *_) -> None:
        k = self.k.value
        self._start(
            lambda ex, im, ax: cluster_patches(ex, im, k, ax), "feature clusters", "labels", "Clustering"
        )
