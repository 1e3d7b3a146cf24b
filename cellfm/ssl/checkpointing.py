"""Training checkpoints (atomic, full state, resumable at any world size) and backbone exports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ..atomic import atomic_write, atomic_write_text
from ..checkpoints import save_backbone

CHECKPOINT = "checkpoint.pt"


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """A plain (unsharded, CPU) state dict, gathering FSDP2 shards when present."""
    out = {}
    for k, v in module.state_dict().items():
        if hasattr(v, "full_tensor"):
            v = v.full_tensor()
        out[k] = v.detach().cpu().clone()
    return out


def save_training_state(out_dir: Path, state: dict[str, Any]) -> Path:
    path = Path(out_dir) / CHECKPOINT
    atomic_write(path, lambda tmp: torch.save(state, tmp), size_hint=tensor_bytes(state))
    return path


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested state (the least a checkpoint of it needs on disk)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def load_training_state(out_dir: Path) -> dict[str, Any] | None:
    path = Path(out_dir) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RuntimeError(
            f"{path}: cannot resume from this checkpoint ({err}); move it away to start over"
        ) from err


def save_config(out_dir: Path, cfg_dict: dict[str, Any]) -> Path:
    path = Path(out_dir) / "config.yaml"
    atomic_write_text(path, yaml.safe_dump(cfg_dict, sort_keys=False))
    return path


def export_backbone(
    out_dir: Path,
    backbone: nn.Module,
    *,
    channel_names: list[str] | None,
    normalization: dict | None,
    extra: dict[str, Any],
) -> list[Path]:
    """`backbone.safetensors` (+ metadata) and, when the layout is DINOv2's, `backbone.pth`."""
    out_dir = Path(out_dir)
    paths = [
        save_backbone(
            backbone,
            out_dir / "backbone.safetensors",
            channel_names=channel_names,
            normalization=normalization,
            extra=extra,
        )
    ]
    if backbone.arch.channel_strategy != "channel_tokens":
        inner = getattr(backbone, "backbone", backbone)
        sd = full_state_dict(inner)
        path = out_dir / "backbone.pth"
        atomic_write(path, lambda tmp: torch.save(sd, tmp))
        paths.append(path)
        meta = out_dir / "backbone.json"
        atomic_write_text(meta, json.dumps({"arch": backbone.arch.to_dict(), **extra}, indent=2))
    return paths
