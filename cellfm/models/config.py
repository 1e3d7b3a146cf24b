"""The `model:` section of a recipe and how it becomes a backbone."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .factory import CHANNEL_STRATEGIES, build_backbone, vit_arch


@dataclass
class ModelConfig:
    """Backbone choice. `pretrained` (path or DINOv2 name) overrides size/patch/registers."""

    size: str = "small"
    patch_size: int = 14
    img_size: int = 224
    in_chans: int = 3
    channel_strategy: str = "fixed"
    num_register_tokens: int = 0
    init_values: float | None = 1e-5
    drop_path_rate: float = 0.0
    drop_path_uniform: bool = True
    pad_mode: str | None = None
    pretrained: str | None = None
    depth: int | None = None  # override the named size's depth (e.g. a 6-block tiny model for CPU)

    def __post_init__(self) -> None:
        if self.channel_strategy not in CHANNEL_STRATEGIES:
            raise ValueError(
                f"model.channel_strategy {self.channel_strategy!r} unknown; choose one of {CHANNEL_STRATEGIES}"
            )


def backbone_from_config(cfg: ModelConfig) -> nn.Module:
    """Build (and optionally load) the backbone a ModelConfig describes."""
    runtime = {
        "drop_path_rate": cfg.drop_path_rate,
        "drop_path_uniform": cfg.drop_path_uniform,
        "pad_mode": cfg.pad_mode,
    }
    if cfg.pretrained:
        from ..checkpoints import load_backbone

        return load_backbone(
            cfg.pretrained,
            in_chans=None if cfg.channel_strategy == "bag_of_channels" else cfg.in_chans,
            channel_strategy=cfg.channel_strategy,
            **runtime,
        )
    in_chans = 1 if cfg.channel_strategy == "bag_of_channels" else cfg.in_chans
    arch = vit_arch(
        cfg.size,
        cfg.patch_size,
        img_size=cfg.img_size,
        in_chans=in_chans,
        channel_strategy=cfg.channel_strategy,
        num_register_tokens=cfg.num_register_tokens,
        init_values=cfg.init_values,
        **({"depth": cfg.depth} if cfg.depth else {}),
    )
    return build_backbone(arch, **runtime)
