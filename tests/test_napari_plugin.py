"""napari plugin, headless (Xvfb): dock every widget, run the scribble flow on real 3D nuclei, check F1."""

from __future__ import annotations

import ctypes.util
import os
from pathlib import Path

# pytest-xvfb provides DISPLAY; xcb renders the canvas (needs libxcb-cursor0 + mesa), offscreen does not.
if "QT_QPA_PLATFORM" not in os.environ:
    xcb = os.environ.get("DISPLAY") and ctypes.util.find_library("xcb-cursor")
    os.environ["QT_QPA_PLATFORM"] = "xcb" if xcb else "offscreen"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

from cellfm.demo import f1  # noqa: E402
from cellfm.segment.strokes import user_strokes  # noqa: E402

F1_THRESHOLD = 0.8  # tiny random-init backbone + filters on nuclei.tif slices 28..31
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "napari_segmentation.png"
WIDGETS = ["Interactive segmentation", "Feature explorer", "Similarity", "Model"]
TIMEOUT_MS = 60_000


def dock(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget("cellfm", name)
    return widget


def wait(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    assert widget.last_error is None, widget.last_error


@pytest.fixture
def viewer_with_nuclei(make_napari_viewer):
    from cellfm.plugins.napari._sample_data import nuclei_3d

    viewer = make_napari_viewer()
    (image, meta, _), (labels, _, _) = nuclei_3d()
    assert image.shape == (60, 256, 256) and labels.shape == image.shape
    layer = viewer.add_image(image[28:32], **meta)
    return viewer, layer, labels[28:32] > 0


def test_segmentation_flow_on_real_nuclei(viewer_with_nuclei, qtbot):
    viewer, image_layer, fg = viewer_with_nuclei
    widgets = {name: dock(viewer, name) for name in WIDGETS}
    assert len(viewer.window.dock_widgets) >= len(WIDGETS)

    model = widgets["Model"]
    model.source.value = "tiny ViT (fast preview, random)"
    model.load()
    wait(qtbot, model)
    assert "tiny" in model.status.value

    seg = widgets["Interactive segmentation"]
    assert seg.image.value is image_layer  # the only image is preselected
    seg.reset_choices()
    assert seg.channel_axis.choices == ("none", "0")  # a 3D stack may carry channels on axis 0
    seg.channel_axis.value = "none"
    seg.train()  # no scribble layer yet: a clear message, no crash
    assert "no scribble layer" in seg.last_error
    seg.add_scribble_layer()
    scrib = viewer.layers["scribbles"]
    assert scrib.data.shape == fg.shape
    viewer.dims.set_current_step(0, 1)
    data = np.zeros(fg.shape, np.uint8)
    data[1] = user_strokes(fg[1], seed=0)  # 8 short lines in nuclei, 8 background discs
    scrib.data = data
    seg.min_size.value = 10
    seg.probability.value = True
    seg.train()  # trains, then predicts the current slice
    qtbot.waitUntil(lambda: "segmentation" in viewer.layers and not seg.busy, timeout=TIMEOUT_MS)
    assert seg.last_error is None, seg.last_error
    out = viewer.layers["segmentation"].data
    assert out.shape == fg.shape and out[0].max() == 0  # only the shown slice so far
    assert set(np.unique(out[1])) == {0, 2}  # background is 0 (not tinted), objects keep their value
    assert f1(out[1] == 2, fg[1]) > F1_THRESHOLD
    np.testing.assert_array_equal(scrib.data, data)  # the user's strokes are untouched
    unc = viewer.layers["uncertainty"].data[1]
    assert 0 <= unc.min() and unc.max() <= 1
    edge = ndi.binary_dilation(fg[1], iterations=2) & ~ndi.binary_erosion(fg[1], iterations=2)
    assert unc[edge].mean() > unc[ndi.binary_erosion(fg[1], iterations=4)].mean()  # paint at the edges next

    seg.predict(all_slices=True)
    wait(qtbot, seg)
    out = viewer.layers["segmentation"].data
    scores = [f1(out[z] == 2, fg[z]) for z in range(len(fg))]
    assert min(scores) > F1_THRESHOLD, scores
    prob = viewer.layers["probability"].data
    assert prob.shape == fg.shape and 0 <= prob.min() and prob.max() <= 1

    seg.instances.value = True
    seg.predict(all_slices=False)
    wait(qtbot, seg)
    inst = viewer.layers["segmentation"].data[1]
    assert inst.max() >= 5  # nuclei split into instances

    # screenshot for the README: image, scribbles and the segmentation (class labels) of slice 1
    seg.instances.value = False
    seg.predict(all_slices=True)
    wait(qtbot, seg)
    viewer.layers["probability"].visible = False
    for name in WIDGETS[1:]:
        viewer.window.remove_dock_widget(widgets[name].native)
    viewer.window.resize(1100, 700)
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=False, flash=False)
    assert shot.ndim == 3 and shot.shape[-1] == 4
    if os.environ.get("QT_QPA_PLATFORM") != "offscreen":  # offscreen Qt leaves the GL canvas blank
        from imageio.v3 import imwrite

        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        imwrite(SCREENSHOT, shot)
        assert SCREENSHOT.stat().st_size > 10_000


def test_explorer_and_similarity_widgets(viewer_with_nuclei, qtbot):
    viewer, image_layer, fg = viewer_with_nuclei
    model = dock(viewer, "Model")
    model.source.value = "tiny ViT (fast preview, random)"
    model.load()
    wait(qtbot, model)

    explorer = dock(viewer, "Feature explorer")
    explorer.reset_choices()
    explorer.image.value = image_layer
    explorer.pca()
    wait(qtbot, explorer)
    assert viewer.layers["feature PCA"].data.shape == (256, 256, 3)
    explorer.k.value = 3
    explorer.cluster()
    wait(qtbot, explorer)
    assert set(np.unique(viewer.layers["feature clusters"].data)) == {1, 2, 3}

    sim = dock(viewer, "Similarity")
    sim.reset_choices()
    sim.image.value = image_layer
    sim.compute()
    assert "no points" in sim.last_error  # asked for explicitly: a clear message
    sim.last_error = None
    sim.add_points_layer()
    assert sim.last_error is None  # a new, empty points layer is no error
    viewer.dims.set_current_step(0, 2)
    ys, xs = np.nonzero(ndi.binary_erosion(fg[2], iterations=4))
    sim.points.value.add([[2, ys[0], xs[0]]])  # adding a point triggers the update
    qtbot.waitUntil(lambda: "similarity" in viewer.layers and not sim.busy, timeout=TIMEOUT_MS)
    assert sim.last_error is None, sim.last_error
    qtbot.wait(300)
    assert sim.computations == 1 and not sim.busy  # one map per added point, not two
    sim.points.value.add([[2, ys[-1], xs[-1]]])
    qtbot.waitUntil(lambda: sim.computations >= 2 and not sim.busy, timeout=TIMEOUT_MS)
    qtbot.wait(300)
    assert sim.computations == 2 and not sim.busy and sim.last_error is None
    smap = viewer.layers["similarity"].data
    assert smap.shape == (256, 256)
    assert smap[fg[2]].mean() > smap[~ndi.binary_dilation(fg[2], iterations=4)].mean()


def test_live_mode_retrains_as_strokes_are_painted(viewer_with_nuclei, qtbot):
    from cellfm.plugins.napari._state import get_state, tiny_backbone

    viewer, image_layer, fg = viewer_with_nuclei
    get_state(viewer).set_backbone(tiny_backbone(), "tiny")
    user_layer = viewer.add_labels(np.ones(fg.shape, np.uint8), name="segmentation")  # the user's own
    seg = dock(viewer, "Interactive segmentation")
    seg.image.value = image_layer
    seg.channel_axis.value = "none"
    seg.add_scribble_layer()
    scrib = viewer.layers["scribbles"]
    seg.live.value = True
    viewer.dims.set_current_step(0, 1)
    strokes = user_strokes(fg[1], seed=0)
    data = np.zeros(fg.shape, np.uint8)
    data[1] = np.where(strokes == 1, 1, 0)  # background only so far: a hint, not an error
    scrib.data = data
    qtbot.waitUntil(lambda: "two classes" in seg.status.value, timeout=TIMEOUT_MS)
    assert seg.last_error is None and seg.trainings == 0
    data = data.copy()
    data[1] = strokes
    scrib.data = data
    scrib.data = data.copy()  # two edits in quick succession: one retrain (debounced)
    qtbot.waitUntil(lambda: seg.trainings == 1 and seg._own("segmentation") is not None and not seg.busy,
                    timeout=TIMEOUT_MS)  # fmt: skip
    qtbot.wait(800)
    assert seg.trainings == 1 and seg.last_error is None
    out = seg._own("segmentation")
    assert out is not user_layer and f1(out.data[1] == 2, fg[1]) > F1_THRESHOLD
    np.testing.assert_array_equal(user_layer.data, 1)  # a layer of the user's is never overwritten
    np.testing.assert_array_equal(scrib.data, data)


def test_mismatched_channels_give_clear_message(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    img = np.random.default_rng(0).integers(0, 1000, (3, 64, 64)).astype(np.uint16)
    layer = viewer.add_image(img, name="three channels")
    seg = dock(viewer, "Interactive segmentation")
    seg.reset_choices()
    seg.image.value = layer
    seg.channel_axis.value = "0"
    seg.add_scribble_layer()
    assert viewer.layers["scribbles"].data.shape == (64, 64)
    scrib = np.zeros((64, 64), np.uint8)
    scrib[:10] = 1
    scrib[-10:] = 2
    viewer.layers["scribbles"].data = scrib
    from cellfm.plugins.napari._state import get_state, tiny_backbone

    get_state(viewer).set_backbone(tiny_backbone(), "tiny")
    seg.train()
    qtbot.waitUntil(lambda: "segmentation" in viewer.layers and not seg.busy, timeout=TIMEOUT_MS)
    seg.image.value = viewer.add_image(img[:2], name="two channels")
    seg.channel_axis.value = "0"
    seg.predict()
    wait_err = lambda: seg.last_error is not None and not seg.busy  # noqa: E731
    qtbot.waitUntil(wait_err, timeout=TIMEOUT_MS)
    assert "fitted on 3" in seg.last_error


def test_model_chooser_loads_a_checkpoint(make_napari_viewer, qtbot, tmp_path):
    from cellfm.plugins.napari._state import get_state, tiny_backbone

    from cellfm.checkpoints import save_backbone
    from cellfm.segment import model_hash

    viewer = make_napari_viewer()
    model = dock(viewer, "Model")
    model.source.value = "checkpoint file"
    model.load()
    wait_err = lambda: model.last_error is not None and not model.busy  # noqa: E731
    qtbot.waitUntil(wait_err, timeout=TIMEOUT_MS)
    assert "pick a checkpoint" in model.last_error
    path = tmp_path / "tiny.safetensors"
    save_backbone(tiny_backbone(), path)
    model.path.value = path
    model.load()
    wait(qtbot, model)
    assert model_hash(get_state(viewer).backbone) == model_hash(tiny_backbone())
    assert "patch 8" in model.status.value


def test_bad_input_gives_clear_messages_and_keeps_strokes(make_napari_viewer, qtbot):
    from cellfm.plugins.napari._state import get_state, tiny_backbone

    viewer = make_napari_viewer()
    get_state(viewer).set_backbone(tiny_backbone(), "tiny")
    img = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    img[5, 5] = np.nan
    layer = viewer.add_image(img, name="with NaN")
    seg = dock(viewer, "Interactive segmentation")
    seg.image.value = layer
    small = np.zeros((32, 32), np.uint8)
    small[:4], small[-4:] = 1, 2
    seg.scribbles.value = viewer.add_labels(small, name="other size")
    seg.train()
    assert "has shape (32, 32), image needs (64, 64)" in seg.last_error
    scrib = np.zeros((64, 64), np.uint8)
    scrib[:8], scrib[-8:] = 1, 2
    strokes = viewer.add_labels(scrib.copy(), name="strokes")
    seg.scribbles.value = strokes
    seg.train()
    qtbot.waitUntil(lambda: seg.last_error is not None and not seg.busy, timeout=TIMEOUT_MS)
    assert "1 NaN or infinite pixels" in seg.last_error
    np.testing.assert_array_equal(strokes.data, scrib)
    assert "segmentation" not in viewer.layers
