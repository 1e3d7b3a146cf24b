"""Model chooser: the default model, a tiny preview model, or any checkpoint `cellfm.load_backbone` reads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox, FileEdit, PushButton

from ._common import WorkerWidget
from ._state import checkpoint_backbone, default_backbone, get_state, tiny_backbone

if TYPE_CHECKING:
    import napari

DEFAULT = "default model"
TINY = "tiny ViT (fast preview, random)"
CHECKPOINT = "checkpoint file"


class ModelWidget(WorkerWidget):
    """Choose the backbone every cellfm widget of this viewer uses."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer, labels=True)
        self.source = ComboBox(label="model", choices=[DEFAULT, TINY, CHECKPOINT], value=DEFAULT)
        self.path = FileEdit(label="checkpoint", mode="r", filter="*.safetensors *.pth *.pt")
        self.load_btn = PushButton(text="Load model")
        self.extend([self.source, self.path, self.load_btn, self.status])
        self.load_btn.changed.connect(self.load)
        state = get_state(viewer)
        self.status.value = state.description or "default model loads on first use"

    def load(self, *_) -> None:
        source, path = self.source.value, str(self.path.value)

        def job(tick):
            if source == TINY:
                return tiny_backbone(), "tiny ViT (random init): for previews and tests"
            if source == CHECKPOINT:
                if not path or path == ".":
                    raise ValueError("pick a checkpoint file first")
                return checkpoint_backbone(path), f"checkpoint {path}"
            return default_backbone()

        def done(result):
            model, note = result
            get_state(self.viewer).set_backbone(model, note)
            arch = model.arch
            self.status.value = (
                f"{note} | patch {arch.patch_size}, dim {arch.embed_dim}, in_chans {arch.in_chans}"
            )

        self.run(job, done, "Loading model")
