"""Interactive segmentation on backbone features: scribbles -> pixel classifier -> labels; feature exploration.

Headless API used by scripts, tests and the napari plugin (`cellfm.plugins.napari`).
"""

from .cache import FeatureCache, array_hash, model_hash, signature
from .classifier import CLASSIFIERS, ForestClassifier, LogisticClassifier
from .explore import cluster_patches, image_features, pca_rgb, similarity_map
from .features import FeatureExtractor, ImageFeatures, channel_mode
from .filters import FilterBank
from .image import ChannelNorm, to_stack
from .postprocess import instances, remove_small
from .segmenter import ScribbleSegmenter
from .tiling import Tiling

__all__ = [
    "CLASSIFIERS",
    "ChannelNorm",
    "FeatureCache",
    "FeatureExtractor",
    "FilterBank",
    "ForestClassifier",
    "ImageFeatures",
    "LogisticClassifier",
    "ScribbleSegmenter",
    "Tiling",
    "array_hash",
    "channel_mode",
    "cluster_patches",
    "image_features",
    "instances",
    "model_hash",
    "pca_rgb",
    "remove_small",
    "signature",
    "similarity_map",
    "to_stack",
]
