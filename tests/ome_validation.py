"""Check a written store the way the ecosystem does: ome-zarr-models validation (warnings are failures)
of every plate, well, image, labels and image-label group, and ome-zarr-py's Reader."""

from __future__ import annotations

import warnings

import zarr


def _models(version: str):
    if version == "0.4":
        from ome_zarr_models.v04.hcs import HCS
        from ome_zarr_models.v04.image import Image
        from ome_zarr_models.v04.image_label import ImageLabel
        from ome_zarr_models.v04.labels import Labels
        from ome_zarr_models.v04.well import Well
    else:
        from ome_zarr_models.v05.hcs import HCS
        from ome_zarr_models.v05.image import Image
        from ome_zarr_models.v05.image_label import ImageLabel
        from ome_zarr_models.v05.labels import Labels
        from ome_zarr_models.v05.well import Well
    return HCS, Well, Image, Labels, ImageLabel


def _validate(cls, group: zarr.Group):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ome-zarr-models reports spec deviations as ValidationWarning
        return cls.from_zarr(group)


def _image(models, group: zarr.Group, counts: dict) -> None:
    _, _, image_cls, labels_cls, label_cls = models
    _validate(image_cls, group)
    counts["images"] += 1
    if "labels" in group:
        labels = _validate(labels_cls, group["labels"])
        for name in labels.ome_attributes.labels:
            label = _validate(label_cls, group["labels"][name])
            attrs = label.ome_attributes.model_dump(by_alias=True)
            assert attrs["image-label"]["source"]["image"] == "../../"
            counts["labels"] += 1


def validate_store(path: str) -> dict:
    """Validate a plate or image store with ome-zarr-models; returns counts of what was validated."""
    root = zarr.open_group(path, mode="r")
    attrs = dict(root.attrs)
    version = "0.5" if "ome" in attrs else "0.4"
    models = _models(version)
    counts = {"version": version, "wells": 0, "images": 0, "labels": 0}
    block = attrs.get("ome", attrs)
    if "plate" in block:
        _validate(models[0], root)
        for well in block["plate"]["wells"]:
            group = root[well["path"]]
            meta = _validate(models[1], group)
            counts["wells"] += 1
            for image in meta.ome_attributes.well.images:
                _image(models, group[image.path], counts)
    else:
        _image(models, root, counts)
    return counts


def read_with_ome_zarr(path: str) -> list:
    """All nodes ome-zarr-py's Reader finds (plates are stitched into one array: fields must agree)."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    nodes = list(Reader(parse_url(path))())
    for node in nodes:
        for level in node.data:
            level.shape  # noqa: B018 - building the plate array raises on shape mismatches
    return nodes
