"""Inference at scale: tiles / cells of plates -> features -> AnnData (.h5ad / .zarr) + patch-feature store."""

from cellfm._lazy import lazy_exports

_EXPORTS = {
    "EmbedConfig": "config",
    "Encoder": "encoder",
    "LEVELS": "config",
    "POOLINGS": "config",
    "embed": "job",
    "find_objects": "pooling",
    "load_model": "encoder",
    "patch_anndata": "patch_store",
    "pool_objects": "pooling",
    "read_patch_map": "patch_store",
    "run_embed": "job",
    "tile_grid": "tiling",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
