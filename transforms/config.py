"""Typed configuration of the augmentation pipeline, loadable from YAML with unknown keys rejected."""

from __future__ import annotations

import dataclasses
import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cellfm.config import from_dict


@dataclass
class NormalizeConfig:
    """See `cellfm.transforms.Normalize`; mode: identity | percentile | zscore | dataset | range."""

    mode: str = "identity"
    low: float = 1.0
    high: float = 99.8
    clip: bool = False
    mean: list[float] | None = None
    std: list[float] | None = None
    eps: float = 1e-6
    max_samples: int | None = 65536


@dataclass
class CropsConfig:
    """Multi-crop sizes, counts and area fractions (DINOv2 defaults; use 98 local px for patch 14)."""

    global_crops_size: int = 224
    local_crops_size: int = 96
    local_crops_number: int = 8
    global_crops_scale: tuple[float, float] = (0.32, 1.0)
    local_crops_scale: tuple[float, float] = (0.05, 0.32)


@dataclass
class GeometryConfig:
    """Crop aspect range, resampling, symmetries and the optional elastic warp.

    `dihedral` draws one of the 8 rot90/flip symmetries per crop and replaces the two flips.
    `small_image`: "error" rejects fields smaller than the largest crop, "upsample" interpolates.
    `global_same_box_p`: probability that the second global crop of a field reuses the first's box, so
    the two views differ only by symmetry, elastic warp and intensity (trains a symmetry-invariant
    CLS token directly); 0 draws every box independently, as DINOv2 does.
    """

    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bicubic"
    antialias: bool = True
    dihedral: bool = True
    p_horizontal_flip: float = 0.5
    p_vertical_flip: float = 0.5
    elastic_p: float = 0.0
    elastic_alpha: float = 8.0
    elastic_grid: int = 5
    small_image: str = "error"
    global_same_box_p: float = 0.0


@dataclass
class FactorConfig:
    """A per-channel multiplicative factor max(N(1, std), minimum), applied with probability p."""

    p: float = 0.8
    std: float = 0.2
    minimum: float = 0.5


@dataclass
class GammaConfig:
    p: float = 0.0
    range: tuple[float, float] = (0.7, 1.5)


@dataclass
class GaussianNoiseConfig:
    p: float = 0.0
    sigma: tuple[float, float] = (0.0, 0.05)


@dataclass
class PoissonNoiseConfig:
    p: float = 0.0
    photons: tuple[float, float] = (50.0, 500.0)
    read_sigma: tuple[float, float] = (0.0, 0.01)


@dataclass
class BlurConfig:
    """Blur probability per global crop (first, second) and per local crop: p = chance of blurring."""

    p_global: tuple[float, float] = (0.0, 0.0)
    p_local: float = 0.0
    sigma: tuple[float, float] = (0.1, 2.0)


@dataclass
class IntensityConfig:
    brightness: FactorConfig = field(default_factory=FactorConfig)
    contrast: FactorConfig = field(default_factory=FactorConfig)
    gamma: GammaConfig = field(default_factory=GammaConfig)
    gaussian_noise: GaussianNoiseConfig = field(default_factory=GaussianNoiseConfig)
    poisson_noise: PoissonNoiseConfig = field(default_factory=PoissonNoiseConfig)
    blur: BlurConfig = field(default_factory=BlurConfig)


@dataclass
class ChannelConfig:
    """Channel count/names (checked when given), protected channels, drop/rescale, Bag-of-Channels."""

    num_channels: int | None = None
    names: list[str] | None = None
    protected: list[int] = field(default_factory=list)
    drop_p: float = 0.0
    rescale_p: float = 0.0
    rescale_range: tuple[float, float] = (0.5, 1.5)
    bag_of_channels: bool = False
    channel_weights: list[float] | None = None


@dataclass
class MaskingConfig:
    """iBOT block masks over the global crops' patch grid (DINOv2 rules)."""

    patch_size: int = 14
    mask_probability: float = 0.5
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    min_num_patches: int = 4
    max_num_patches_ratio: float = 0.5
    min_aspect: float = 0.3
    strict_blocks: bool = True


@dataclass
class AugmentConfig:
    """The full augmentation recipe: what `MultiCrop.from_config` and `MaskCollator.from_config` read."""

    crops: CropsConfig = field(default_factory=CropsConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    intensity: IntensityConfig = field(default_factory=IntensityConfig)
    channels: ChannelConfig = field(default_factory=ChannelConfig)
    input_norm: NormalizeConfig = field(default_factory=lambda: NormalizeConfig(mode="percentile"))
    output_norm: NormalizeConfig = field(default_factory=lambda: NormalizeConfig(mode="zscore", eps=0.01))
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    nan_policy: str = "error"
    nan_fill: float = 0.0
    # where training augments: cpu = per sample in the data workers; cuda = batched on the training
    # device (must be CUDA); device = batched on the training device, whatever it is; auto = cuda
    # when training on CUDA, else cpu (see cellfm.ssl.loader)
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples as lists) suitable for YAML."""
        return _plain(dataclasses.asdict(self))


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


def augment_config_from_dict(data: dict | None, validate: bool = True) -> AugmentConfig:
    """Typed `AugmentConfig` from a dict; with `validate`, also builds the pipeline to check values."""
    cfg = from_dict(AugmentConfig, data)
    if validate:
        from cellfm.data.workers import check_loader_settings

        check_loader_settings(0, cfg.device)
        from .collate import MaskCollator
        from .multicrop import MultiCrop

        MultiCrop.from_config(cfg)
        MaskCollator.from_config(cfg)
    return cfg


RECIPES = ("cellpainting5", "hpa4", "nuclei1", "bag_of_channels")


def load_augment_config(name_or_path: str | Path) -> AugmentConfig:
    """Load a YAML recipe: a file path, or a shipped name from `RECIPES` (configs/augment_<name>.yaml)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"augmentation config {str(path)!r} does not exist")
        text, source = path.read_text(), str(path)
    else:
        res = importlib.resources.files("cellfm.configs") / f"augment_{name_or_path}.yaml"
        if not res.is_file():
            raise ValueError(f"unknown augmentation recipe {str(name_or_path)!r}; shipped: {list(RECIPES)}")
        text, source = res.read_text(), f"cellfm.configs/augment_{name_or_path}.yaml"
    try:
        return augment_config_from_dict(yaml.safe_load(text))
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from err
