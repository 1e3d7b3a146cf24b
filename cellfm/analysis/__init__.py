"""Analysis of embeddings: normalisation to controls, well aggregation, clustering, metrics, plots."""

from .aggregate import aggregate_wells
from .cluster import cluster
from .metrics import average_precision_activity, knn_accuracy, linear_probe_accuracy, phenotypic_activity
from .normalize import METHODS, normalize_to_controls
from .pipeline import analyze
from .plots import pca_rgb, plot_patch_pca, plot_umap
from .representation import control_mask, get_rep

__all__ = [
    "METHODS",
    "aggregate_wells",
    "analyze",
    "average_precision_activity",
    "cluster",
    "control_mask",
    "get_rep",
    "knn_accuracy",
    "linear_probe_accuracy",
    "normalize_to_controls",
    "pca_rgb",
    "phenotypic_activity",
    "plot_patch_pca",
    "plot_umap",
]
