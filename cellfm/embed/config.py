"""What an embedding job computes: level, pooling, tiling, batching, channels and objects."""

from __future__ import annotations

from dataclasses import asdict, dataclass

LEVELS = ("field", "tile", "cell")
POOLINGS = {
    "field": ("cls", "mean"),
    "tile": ("cls", "mean"),
    "cell": ("mask", "mask_bilinear", "crop"),
}
DEFAULT_POOLING = {"field": "cls", "tile": "cls", "cell": "mask"}


@dataclass
class EmbedConfig:
    """Options of `cellfm.embed.embed`; `None` sizes follow the model's patch size.

    `tile_size` / `overlap` in pixels (rounded to the patch grid); `crop_size` for cell crops;
    objects smaller than `min_area` pixels are dropped with a warning.
    """

    level: str = "field"
    pooling: str | None = None
    labels: str | None = None
    channels: list[str] | None = None
    image_level: int | str = 0
    tile_size: int | None = None
    overlap: int | None = None
    crop_size: int | None = None
    batch_size: int = 8
    min_area: int = 1
    device: str = "cpu"
    amp: bool = True
    int8: bool = False  # CPU only: int8 matmuls in the transformer blocks (cellfm.models.int8)
    cls_tta: bool = False  # CLS = mean over the 8 rot90/flip symmetries of each input (8x the compute)
    prefetch: int = 2
    normalization: dict | None = None
    on_bad_data: str = "skip"  # damaged chunks: skip the field (uns["cellfm"]["skipped"]) | fail
    nan_policy: str = "error"  # NaN/Inf pixels: error | zero | skip (the field)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {self.level!r}")
        self.pooling = self.pooling or DEFAULT_POOLING[self.level]
        if self.pooling not in POOLINGS[self.level]:
            raise ValueError(
                f"pooling {self.pooling!r} does not apply to level {self.level!r}; "
                f"choose one of {POOLINGS[self.level]}"
            )
        if self.level != "cell" and self.labels is not None:
            raise ValueError(f"labels={self.labels!r} is only used with level='cell'")
        for name in ("tile_size", "overlap", "crop_size"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "overlap" else 1):
                raise ValueError(f"{name} must be positive, got {value}")
        if self.batch_size < 1 or self.min_area < 1 or self.prefetch < 0:
            raise ValueError(
                f"batch_size and min_area must be >= 1 and prefetch >= 0, got batch_size={self.batch_size}, "
                f"min_area={self.min_area}, prefetch={self.prefetch}"
            )
        if self.int8 and not str(self.device).startswith("cpu"):
            raise ValueError(f"int8 runs on the CPU; on device {self.device!r} use amp (mixed precision)")
        from cellfm.data.checked_read import check_policy

        check_policy(self.on_bad_data, self.nan_policy)
        if self.channels is not None and len(set(self.channels)) != len(self.channels):
            raise ValueError(f"duplicate channel names in channels={self.channels}")

    def grid(self, patch: int) -> tuple[int, int, int]:
        """(tile, overlap, crop) in pixels, multiples of the patch size `patch`."""
        tile = self.tile_size or patch * 37  # DINOv2's 518 px for patch 14
        tile = max(patch, tile // patch * patch)
        overlap = patch * 2 if self.overlap is None else self.overlap
        overlap = min(-(-overlap // patch) * patch, tile - patch)
        crop = max(patch, (self.crop_size or patch * 8) // patch * patch)
        return tile, overlap, crop

    def to_dict(self) -> dict:
        """JSON-ready dict (job signature and provenance)."""
        return asdict(self)
