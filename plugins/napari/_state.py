"""The backbone and feature extractor shared by the widgets of one viewer (set by the model chooser)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from cellfm.segment import FeatureCache, FeatureExtractor

DEFAULT_NOTE = (
    "No shipped pretrained model yet: using a freshly initialised ViT-S/14 (1 input channel; "
    "each image channel is encoded separately). Features are random until you load a checkpoint."
)


def default_backbone() -> tuple[nn.Module, str]:
    """The shipped default model when available, else a fresh ViT-S/14 and a note saying so."""
    try:
        from cellfm import load_backbone  # type: ignore[attr-defined]

        return load_backbone(), "cellfm default model"
    except Exception as err:  # no default shipped yet (or no loader in this build)
        from cellfm.models import vit_small

        torch.manual_seed(0)
        return vit_small(patch_size=14, in_chans=1), f"{DEFAULT_NOTE} ({type(err).__name__}: {err})"


def tiny_backbone() -> nn.Module:
    """A small random ViT (patch 8, 2 blocks): fast previews and tests."""
    from cellfm.models import VisionTransformer, ViTArch

    torch.manual_seed(0)
    return VisionTransformer(ViTArch(embed_dim=64, depth=2, num_heads=2, patch_size=8, in_chans=1))


def checkpoint_backbone(path: str) -> nn.Module:
    """Any checkpoint `cellfm.load_backbone` accepts (safetensors, official DINOv2, training exports)."""
    try:
        from cellfm import load_backbone  # type: ignore[attr-defined]
    except ImportError:
        from cellfm.checkpoints import load_backbone  # type: ignore[no-redef]
    return load_backbone(path)


@dataclass
class ModelState:
    backbone: nn.Module | None = None
    description: str = ""
    cache: FeatureCache = field(default_factory=FeatureCache)
    _extractor: FeatureExtractor | None = None

    def set_backbone(self, backbone: nn.Module, description: str) -> None:
        self.backbone, self.description = backbone, description
        self._extractor = None

    @property
    def extractor(self) -> FeatureExtractor:
        """The extractor of the chosen backbone (the default one on first use); its cache is shared."""
        if self.backbone is None:
            self.set_backbone(*default_backbone())
        if self._extractor is None:
            self._extractor = FeatureExtractor(self.backbone, cache=self.cache)
        return self._extractor


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def get_state(viewer) -> ModelState:
    """The model state of `viewer`, created on first use (one per viewer, released with it)."""
    viewer = getattr(viewer, "__wrapped__", viewer)  # napari hands widgets a PublicOnlyProxy
    if viewer not in _STATES:
        _STATES[viewer] = ModelState()
    return _STATES[viewer]
