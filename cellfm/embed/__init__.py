"""Inference at scale: tiles / cells of plates -> features -> AnnData (.h5ad / .zarr) + patch-feature store."""

from .config import LEVELS, POOLINGS, EmbedConfig
from .encoder import Encoder, load_model
from .job import embed, run_embed
from .patch_store import patch_anndata, read_patch_map
from .pooling import find_objects, pool_objects
from .tiling import tile_grid

__all__ = [
    "LEVELS",
    "POOLINGS",
    "EmbedConfig",
    "Encoder",
    "embed",
    "find_objects",
    "load_model",
    "patch_anndata",
    "pool_objects",
    "read_patch_map",
    "run_embed",
    "tile_grid",
]
