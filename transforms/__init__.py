"""Multi-channel microscopy augmentations and multi-crop (imported as `cellfm.transforms`).

Every random op takes an optional `torch.Generator`; a probability ``p`` always means the chance
that the op is applied (unlike DINOv2's inverted blur wrapper).
"""

from .channels import DropChannel, RescaleChannel, sample_channel, split_channels
from .collate import MaskCollator, collate_multicrop
from .config import (
    RECIPES,
    AugmentConfig,
    BlurConfig,
    ChannelConfig,
    CropsConfig,
    FactorConfig,
    GammaConfig,
    GaussianNoiseConfig,
    GeometryConfig,
    IntensityConfig,
    MaskingConfig,
    NormalizeConfig,
    PoissonNoiseConfig,
    augment_config_from_dict,
    load_augment_config,
)
from .geometry import (
    RandomResizedCrop,
    dihedral_views,
    elastic_warp,
    random_dihedral,
    random_flip,
    resized_crop,
    sample_crop_box,
)
from .intensity import (
    DINOV2_EFFECTIVE_BLUR_P,
    Brightness,
    Contrast,
    Gamma,
    GaussianBlur,
    GaussianNoise,
    PoissonGaussianNoise,
    gaussian_blur,
)
from .masking import MaskingGenerator
from .multicrop import MultiCrop
from .normalize import Normalize

__all__ = [
    "DINOV2_EFFECTIVE_BLUR_P",
    "RECIPES",
    "AugmentConfig",
    "BlurConfig",
    "Brightness",
    "ChannelConfig",
    "Contrast",
    "CropsConfig",
    "DropChannel",
    "FactorConfig",
    "Gamma",
    "GammaConfig",
    "GaussianBlur",
    "GaussianNoise",
    "GaussianNoiseConfig",
    "GeometryConfig",
    "IntensityConfig",
    "MaskCollator",
    "MaskingConfig",
    "MaskingGenerator",
    "MultiCrop",
    "Normalize",
    "NormalizeConfig",
    "PoissonGaussianNoise",
    "PoissonNoiseConfig",
    "RandomResizedCrop",
    "RescaleChannel",
    "augment_config_from_dict",
    "collate_multicrop",
    "elastic_warp",
    "gaussian_blur",
    "load_augment_config",
    "dihedral_views",
    "random_dihedral",
    "random_flip",
    "resized_crop",
    "sample_channel",
    "sample_crop_box",
    "split_channels",
]
