"""Data layer: OME-Zarr / Zarr / TIFF stores, TIFF -> OME-Zarr conversion, sharded crop datasets, statistics."""

from cellfm._lazy import lazy_exports

_EXPORTS = {
    "ChannelStats": "stats",
    "ConvertReport": "convert",
    "CropDataset": "dataset",
    "Image": "stores",
    "Shard": "sharding",
    "collate_samples": "dataset",
    "compute_stats": "stats",
    "convert_plate": "convert",
    "current_shard": "sharding",
    "describe": "inspect",
    "field_weights": "dataset",
    "list_fields": "plates",
    "load_stats": "stats",
    "match_channels": "channels",
    "save_stats": "stats",
    "store_kind": "plates",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
