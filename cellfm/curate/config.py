"""What `cellfm curate` does: level and tiling, QC thresholds, dedup threshold, hierarchy, caps."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

LEVELS = ("field", "tile")
REASONS = ("ok", "duplicate_of:<id>", "empty", "out_of_focus", "saturated", "invalid", "cap")


@dataclass
class QCThresholds:
    """Per field/tile quality limits, measured on the real sample plate (tests/curate_plate.py; README
    "Curation"): real 128 px crops have focus >= 0.0046 (one smooth crop 0.0005), Gaussian-blurred
    (sigma 6) copies <= 0.0012; empty (flat + noise) fields have < 0.001 of the median contrast."""

    min_foreground: float = 0.005  # fraction above the Otsu cut of the percentile-scaled image
    min_contrast: float = 0.05  # smoothed std, as a fraction of the collection's median
    min_snr: float = 0.5  # smoothed std / robust pixel-noise sigma (pure noise 0.11, real crops >= 1.27)
    min_focus: float = 0.002  # Laplacian variance / variance of the percentile-scaled image
    max_saturated: float = 0.05  # fraction of pixels at the integer dtype's maximum
    min_std: float = 0.0  # a window with std <= this (raw units) is constant: invalid


@dataclass
class CurateConfig:
    """Options of `cellfm.curate.curate`."""

    level: str = "field"
    tile_size: int | None = None  # pixels; None follows the embedding default (37 patches)
    overlap: int | None = 0  # tiles do not overlap by default: overlapping tiles would be near-duplicates
    batch_size: int = 8
    device: str = "cpu"
    qc: QCThresholds = field(default_factory=QCThresholds)
    candidate_threshold: float = 0.5  # weighted centred cosine of the descriptors: candidate pairs
    duplicate_threshold: float = 0.92  # best shift-aligned band-pass correlation: a candidate is a copy
    descriptor_grid: int = 3  # patch features pooled on a grid x grid layout for copy detection
    image_weight: float = 0.5  # share of the low-pass image descriptor's cosine (rest: pooled patch features)
    neighbours: int = 16  # nearest neighbours examined per row for duplicates
    exact_max: int = 20000  # exact (brute-force) search up to this many rows, HNSW above
    kmeans_levels: list[int] | None = None  # clusters per level, finest first; None: n^(2/3), n^(1/3)
    kmeans_iters: int = 20
    resample_steps: int = 2  # Vo et al. resampling-clustering steps per level
    sample_fraction: float = 0.5  # balanced-sampling target, as a fraction of the rows kept after QC/dedup
    controls: dict[str, str] = field(default_factory=dict)  # obs column -> value marking control rows
    max_control_fraction: float | None = None  # e.g. 0.1: controls at most 10% of the kept rows
    seed: int = 0

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"curation level must be one of {LEVELS}, got {self.level!r}")
        if not 0 < self.duplicate_threshold <= 1:
            raise ValueError(f"duplicate_threshold must be in (0, 1], got {self.duplicate_threshold}")
        if not 0 < self.sample_fraction <= 1:
            raise ValueError(f"sample_fraction must be in (0, 1], got {self.sample_fraction}")
        if self.max_control_fraction is not None and not 0 <= self.max_control_fraction <= 1:
            raise ValueError(f"max_control_fraction must be in [0, 1], got {self.max_control_fraction}")
        if self.max_control_fraction is not None and not self.controls:
            raise ValueError("max_control_fraction needs controls (e.g. --controls treatment=DMSO)")
        if not -1 <= self.candidate_threshold <= 1:
            raise ValueError(f"candidate_threshold must be in [-1, 1], got {self.candidate_threshold}")
        if self.descriptor_grid < 1 or self.neighbours < 1:
            raise ValueError("descriptor_grid and neighbours must be >= 1")
        if not 0 <= self.image_weight <= 1:
            raise ValueError(f"image_weight must be in [0, 1], got {self.image_weight}")

    def to_dict(self) -> dict:
        return asdict(self)
