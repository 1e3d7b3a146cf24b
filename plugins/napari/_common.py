"""Shared widget helpers: layer choices, current-slice extraction, thread workers with napari progress."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from magicgui.widgets import ComboBox, Container, Label
from napari.layers import Image, Labels, Points
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error
from qtpy.QtCore import QObject, Signal

NO_CHANNEL = "none"


class _Ticker(QObject):
    """Carries progress fractions from a worker thread to the GUI thread (queued signal)."""

    tick = Signal(float)


def layer_choices(viewer, kind: type) -> Callable:
    def choices(_widget=None) -> list:
        return [layer for layer in viewer.layers if isinstance(layer, kind)]

    return choices


class WorkerWidget(Container):
    """A Container that runs long jobs in a thread worker with a napari progress bar and a status line."""

    def __init__(self, viewer, **kwargs):
        super().__init__(**kwargs)
        self.viewer = viewer
        self.status = status_label()
        self.worker = None
        self.busy = False
        self.last_error: str | None = None

    def image_inputs(self) -> tuple[ComboBox, ComboBox]:
        """The image-layer and channel-axis pickers of the image widgets, kept in step with the layer list."""
        image = image_combo(self.viewer)
        axis = ComboBox(label="channel axis", choices=lambda _widget=None: channel_axis_choices(image.value))
        image.changed.connect(lambda *_: axis.reset_choices())

        def refresh(*_):
            self.reset_choices()
            preselect_single(image)

        self.viewer.layers.events.inserted.connect(refresh)
        self.viewer.layers.events.removed.connect(refresh)
        preselect_single(image)
        return image, axis

    def fail(self, message: str) -> None:
        self.last_error = message
        self.status.value = f"error: {message}"
        show_error(message)

    def run(
        self, job: Callable[[Callable[[float], None]], object], done: Callable[[object], None], desc: str
    ):
        """Run `job(tick)` in a thread (tick takes a fraction 0..1); call `done(result)` in the GUI thread."""
        if self.busy:
            self.status.value = "busy: wait for the running job to finish"
            return None
        self.busy = True
        self.last_error = None
        self.status.value = f"{desc}..."

        bar = progress(total=100, desc=desc)
        ticker = _Ticker()
        seen = [0]

        def advance(fraction: float) -> None:  # GUI thread
            n = int(round(100 * min(max(fraction, 0.0), 1.0)))
            if n > seen[0]:
                bar.update(n - seen[0])
                seen[0] = n

        ticker.tick.connect(advance)

        def work():
            return job(ticker.tick.emit)  # emitted from the worker thread, delivered in the GUI thread

        def release() -> None:
            bar.close()
            if self.worker is worker:
                self.busy = False

        def finished_ok(result):
            release()
            self.status.value = f"{desc}: done"
            try:
                done(result)
            except Exception as err:  # errors while showing results
                self.fail(str(err))

        def finished_err(err):
            release()
            self.fail(f"{desc} failed: {err}")

        worker = create_worker(
            work, _connect={"returned": finished_ok, "errored": finished_err}, _start_thread=False
        )
        worker._cellfm_ticker = ticker  # keep the signal object alive as long as the worker
        self.worker = worker
        worker.start()
        return worker


def status_label() -> Label:
    """A status line that wraps long messages instead of widening the dock."""
    from qtpy.QtWidgets import QSizePolicy

    label = Label(value="")
    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
    return label


def preselect_single(combo: ComboBox) -> None:
    """Pick the only real choice of a nullable layer picker when nothing is picked yet."""
    layers = [c for c in combo.choices if c is not None]
    if combo.value is None and len(layers) == 1:
        combo.value = layers[0]


def image_combo(viewer, label: str = "image") -> ComboBox:
    return ComboBox(label=label, choices=layer_choices(viewer, Image), nullable=True)


def labels_combo(viewer, label: str) -> ComboBox:
    return ComboBox(label=label, choices=layer_choices(viewer, Labels), nullable=True)


def points_combo(viewer, label: str) -> ComboBox:
    return ComboBox(label=label, choices=layer_choices(viewer, Points), nullable=True)


def add_points_for(viewer, image: Image | None, name: str, color: str):
    """A new Points layer in "add" mode with the spatial dimensions of `image` (2-D without one)."""
    ndim = image.ndim if image is not None else 2
    if image is not None and image.rgb:
        ndim -= 1
    layer = viewer.add_points(ndim=ndim, name=name, face_color=color, size=8)
    layer.mode = "add"
    return layer


def channel_axis_choices(layer: Image | None) -> list[str]:
    if layer is None or layer.rgb:
        return [NO_CHANNEL]
    return [NO_CHANNEL] + [str(i) for i in range(layer.ndim - 2)]


def layer_array(layer: Image, channel_axis: str) -> tuple[np.ndarray, int | None]:
    """The layer's data (level 0 of a pyramid) and its channel axis; RGB layers move channels first."""
    data = layer.data[0] if layer.multiscale else layer.data
    data = np.asarray(data)
    if layer.rgb:
        return np.moveaxis(data, -1, -3), data.ndim - 3
    return data, None if channel_axis == NO_CHANNEL else int(channel_axis)


def spatial_ndim(data: np.ndarray, channel_axis: int | None) -> int:
    return data.ndim - (channel_axis is not None)


def current_slice_index(viewer, ndim: int) -> tuple[int, ...]:
    """Indices of the leading (stack) axes of an `ndim`-dim spatial array at the viewer's current step."""
    step = viewer.dims.current_step[-ndim:] if ndim else ()
    return tuple(int(i) for i in step[: ndim - 2])


def current_slice(viewer, data: np.ndarray, channel_axis: int | None) -> tuple[np.ndarray, tuple[int, ...]]:
    """The 2D slice (with channels) shown now, plus its stack index."""
    nsp = spatial_ndim(data, channel_axis)
    index = current_slice_index(viewer, nsp)
    if channel_axis is None:
        return data[index], index
    moved = np.moveaxis(data, channel_axis, 0)
    return moved[(slice(None), *index)], index
