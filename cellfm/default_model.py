"""The default cellfm model shipped inside the package (cellfm/weights/).

A ViT-tiny (192 wide, 6 blocks, patch 8, 1 channel) pretrained by cellfm's own engine on the offline
sample images (configs/default_model.yaml, then configs/default_model_cls_invariance.yaml); see
docs/model_card.md. `cellfm.load_backbone()` with no
argument returns it.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

DEFAULT_MODEL_FILE = "cellfm_vitt8_default.safetensors"
DEFAULT_METRICS_FILE = "cellfm_vitt8_default_metrics.jsonl"


def _weights_dir() -> Path:
    return Path(str(resources.files("cellfm") / "weights"))


def default_model_path() -> Path:
    """Path of the shipped default backbone; a clear error if the package was installed without it."""
    path = _weights_dir() / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"the default cellfm model is missing ({path}); reinstall cellfm, or pass a checkpoint path "
            f"or a DINOv2 name such as 'dinov2_vits14'"
        )
    return path


def default_metrics() -> list[dict]:
    """Per-step training metrics of the default model (for its loss curve); [] if not shipped."""
    path = _weights_dir() / DEFAULT_METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]
