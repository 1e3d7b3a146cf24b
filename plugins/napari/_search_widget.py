"""Find similar: click a point on an image; the k most similar fields / tiles / cells of an embedded store
(a `cellfm curate` folder or a `cellfm embed` .h5ad / .zarr) as a table and a montage image layer.

A thin view over `cellfm.curate.search`: the window around the click is embedded as the store was (same
model, channels, tiling, normalisation), in a thread worker."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import FileEdit, PushButton, SpinBox, Table

from ._common import WorkerWidget, add_points_for, current_slice, layer_array, points_combo

if TYPE_CHECKING:
    import napari

MONTAGE = "similar (query | results)"
COLUMNS = ("rank", "score", "id", "plate", "well", "field", "y", "x")


def query_point(image_layer, points_layer, shape: tuple[int, int]) -> tuple[float, float]:
    """The last point of `points_layer` in the pixel (y, x) of `image_layer`'s shown plane; an error
    naming the point and the image size when it lies outside."""
    if points_layer is None or len(points_layer.data) == 0:
        raise ValueError("no query point: click 'New points layer' and click on a cell or region")
    world = points_layer.data_to_world(np.asarray(points_layer.data[-1]))
    y, x = (float(v) for v in np.asarray(image_layer.world_to_data(world))[-2:])
    if not (0 <= y < shape[0] and 0 <= x < shape[1]):
        raise ValueError(f"the query point (y {y:.0f}, x {x:.0f}) is outside the image "
                         f"({shape[0]} x {shape[1]} pixels): click inside it")  # fmt: skip
    return y, x


def recorded_model(adata):
    """The checkpoint file a loaded store records it was embedded with, when it still exists; else None
    (the shipped default model)."""
    recorded = str(dict(adata.uns["cellfm"]).get("checkpoint", ""))
    return recorded if recorded and Path(recorded).is_file() else None


class SearchWidget(WorkerWidget):
    """Pick an embedded store, click a point on the image, find the k most similar rows of the store."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer, labels=True)
        self.store = FileEdit(label="embedded store", mode="r", filter="*.h5ad")
        self.store.native.setToolTip("a `cellfm curate` folder (type or paste it) or a `cellfm embed` .h5ad")
        self.model = FileEdit(label="model (optional)", mode="r", filter="*.safetensors *.pth *.pt")
        self.model.native.setToolTip("the checkpoint the store was embedded with; empty: the one it records")
        self.image, self.channel_axis = self.image_inputs()
        self.points = points_combo(self.viewer, "query points")
        self.new_points = PushButton(text="New points layer")
        self.k = SpinBox(label="k", value=8, min=1, max=200)
        # 0: as the store was embedded (a cell store: the field around the cell up to 512 px, measured to
        # find the clicked cell; a field / tile store: a 64 px window)
        self.crop = SpinBox(label="query window (px, 0: auto)", value=0, min=0, max=4096, step=8)
        self.crop.native.setToolTip(
            "0: as the store was embedded (cells: up to 512 px of context; fields: 64 px)"
        )
        self.find_btn = PushButton(text="Find similar")
        self.table = Table(value={c: [] for c in COLUMNS})
        self.extend([self.store, self.model, self.image, self.channel_axis, self.points, self.new_points,
                     self.k, self.crop, self.find_btn, self.status, self.table])  # fmt: skip
        self.result = None  # the last result table (pandas), for scripts and tests
        self._montage = None  # the montage layer this widget made (never a layer of the user's)
        self.new_points.changed.connect(self.add_points_layer)
        self.find_btn.changed.connect(lambda: self.find())

    def add_points_layer(self, *_):
        self.points.value = add_points_for(self.viewer, self.image.value, "query points", "magenta")

    def _path(self, edit: FileEdit) -> str:
        value = str(edit.value or "").strip()
        return "" if value in ("", ".") else value

    def find(self, *_) -> None:
        try:
            store = self._path(self.store)
            if not store:
                raise ValueError(
                    "no embedded store: choose a `cellfm curate` folder or a `cellfm embed` .h5ad"
                )
            if not Path(store).exists():
                raise ValueError(f"embedded store {store}: no such file or folder")
            if self.image.value is None:
                raise ValueError("no image layer: open an image and pick it")
            data, axis = layer_array(self.image.value, self.channel_axis.value)
            plane, _ = current_slice(self.viewer, data, axis)
            plane = np.asarray(plane)
            query = plane[None] if axis is None else plane  # (C, H, W)
            at = query_point(self.image.value, self.points.value, query.shape[-2:])
            # a cell store pools each cell over its mask: the clicked cell's mask comes from a 2-D Labels
            # layer of the image's size (the segmentation the store was embedded with)
            labels = next((np.asarray(ly.data) for ly in self.viewer.layers if type(ly).__name__ == "Labels"
                           and np.ndim(ly.data) == 2 and tuple(np.shape(ly.data)) == tuple(query.shape[-2:])), None)  # fmt: skip
        except ValueError as err:
            self.fail(str(err))
            return
        model, k, crop = self._path(self.model) or None, int(self.k.value), int(self.crop.value) or None

        def job(tick):
            from cellfm.curate import search
            from cellfm.curate.retrieval import load_embedding, read_query, result_thumbnails

            loaded = load_embedding(store)  # read once; a clear error for a store without embeddings
            adata = loaded[0]
            tick(0.1)
            result = search(store, query, k, model=model or recorded_model(adata), at=at, crop=crop,
                            query_labels=labels, loaded=loaded)  # fmt: skip
            tick(0.8)
            return result, result_thumbnails(result, read_query(query, at, crop), adata)

        def done(output):
            from cellfm.curate.retrieval import montage_strip

            result, thumbs = output
            self.result = result
            self.table.value = {c: [str(v) if c != "score" else f"{v:.3f}" for v in result[c]]
                                for c in COLUMNS if c in result}  # fmt: skip
            strip = montage_strip(thumbs)
            if self._montage is not None and self._montage in self.viewer.layers:
                self._montage.data = strip
            else:  # a new layer (napari gives it a unique name): nothing of the user's is replaced
                self._montage = self.viewer.add_image(strip, name=MONTAGE, colormap="gray",
                                                      contrast_limits=(0.0, 1.0))  # fmt: skip
            top = result.iloc[0] if len(result) else None
            self.status.value = (f"{len(result)} similar rows; best: well {top['well']} field {top['field']} "
                                 f"(score {top['score']:.3f})" if top is not None else "no rows in the store")  # fmt: skip

        self.run(job, done, "Finding similar")
