"""cellfm: DINOv2 self-supervised learning, distillation and embedding for multi-channel microscopy."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cellfm")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"


def load_backbone(source=None, **kwargs):
    """Load a backbone from a checkpoint path or known name; see `cellfm.checkpoints.load_backbone`."""
    from .checkpoints import load_backbone as _load

    return _load(source, **kwargs)


def save_backbone(model, path, **kwargs):
    """Save backbone weights as safetensors + metadata; see `cellfm.checkpoints.save_backbone`."""
    from .checkpoints import save_backbone as _save

    return _save(model, path, **kwargs)


__all__ = ["__version__", "load_backbone", "save_backbone"]
