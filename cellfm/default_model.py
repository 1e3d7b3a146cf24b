"""Where the default cellfm model lives (shipped inside the package once trained)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEFAULT_MODEL_FILE = "cellfm_vits8_default.safetensors"


def default_model_path() -> Path:
    """Path of the shipped default backbone; a clear error while none is shipped."""
    path = Path(str(resources.files("cellfm") / "weights" / DEFAULT_MODEL_FILE))
    if not path.is_file():
        raise FileNotFoundError(
            f"the default cellfm model ({DEFAULT_MODEL_FILE}) is not shipped with this version; "
            f"pass a checkpoint path or a DINOv2 name such as 'dinov2_vits14'"
        )
    return path
