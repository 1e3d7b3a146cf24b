"""Data layer: OME-Zarr / Zarr / TIFF stores, TIFF -> OME-Zarr conversion, sharded crop datasets, statistics."""

from cellfm.data.channels import match_channels
from cellfm.data.convert import ConvertReport, convert_plate
from cellfm.data.dataset import CropDataset, collate_samples, field_weights
from cellfm.data.inspect import describe
from cellfm.data.plates import list_fields, store_kind
from cellfm.data.sharding import Shard, current_shard
from cellfm.data.stats import ChannelStats, compute_stats, load_stats, save_stats
from cellfm.data.stores import Image

__all__ = [
    "ChannelStats",
    "ConvertReport",
    "CropDataset",
    "Image",
    "Shard",
    "collate_samples",
    "compute_stats",
    "convert_plate",
    "current_shard",
    "describe",
    "field_weights",
    "list_fields",
    "load_stats",
    "match_channels",
    "save_stats",
    "store_kind",
]
