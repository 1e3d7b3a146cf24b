"""Collate MultiCrop outputs into the packed tensors the SSL engine consumes (DINOv2 layout)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._utils import check_range, rand
from .config import AugmentConfig
from .masking import MaskingGenerator


def _crops(samples: Sequence | dict, key: str) -> torch.Tensor | None:
    """Crop-major stack: all images' crop 0, then all images' crop 1, ... (None when there are none)."""
    if isinstance(samples, dict):  # MultiCrop.batch output: list of (B, C, S, S)
        parts = samples[key]
        return torch.cat(parts) if parts else None
    n = len(samples[0][key])
    for i, s in enumerate(samples):
        if len(s[key]) != n:
            raise ValueError(f"sample {i} has {len(s[key])} {key}, sample 0 has {n}")
    if n == 0:
        return None
    return torch.stack([s[key][j] for j in range(n) for s in samples])


def _unwrap(samples: Sequence | dict) -> Sequence | dict:
    """Accept MultiCrop dicts, (dict, target) pairs as in DINOv2 datasets, or one batched dict."""
    if isinstance(samples, dict):
        return samples
    if len(samples) == 0:
        raise ValueError("cannot collate an empty list of samples")
    return [s[0] if isinstance(s, tuple | list) else s for s in samples]


def sample_ibot_masks(
    n_crops: int,
    mask_generator: MaskingGenerator,
    mask_ratio: tuple[float, float] = (0.1, 0.5),
    mask_probability: float = 0.5,
    generator: torch.Generator | None = None,
) -> dict:
    """The iBOT masks of `n_crops` global crops (they depend on no pixel): ``collated_masks``,
    ``mask_indices_list``, ``masks_weight``, ``n_masked_patches`` and ``upperbound``, as
    `collate_multicrop` returns them."""
    n_tokens = mask_generator.num_patches
    grid = (mask_generator.height, mask_generator.width)
    n_masked_crops = int(n_crops * mask_probability)
    bounds = torch.linspace(mask_ratio[0], mask_ratio[1], n_masked_crops + 1).tolist()
    u = rand((max(n_masked_crops, 1),), generator, torch.device("cpu")).tolist()
    masks, upperbound = [], 0
    for i in range(n_masked_crops):
        ratio = bounds[i] + (bounds[i + 1] - bounds[i]) * u[i]
        masks.append(mask_generator(int(n_tokens * ratio), generator))
        upperbound += int(n_tokens * bounds[i + 1])
    masks += [torch.zeros(grid, dtype=torch.bool)] * (n_crops - n_masked_crops)
    gdev = generator.device if generator is not None else "cpu"
    order = torch.randperm(n_crops, generator=generator, device=gdev).cpu()
    collated_masks = torch.stack(masks)[order].flatten(1)
    mask_indices_list = collated_masks.flatten().nonzero().flatten()
    per_image = collated_masks.sum(-1, keepdim=True).clamp(min=1).to(torch.float32)
    masks_weight = (1.0 / per_image).expand_as(collated_masks)[collated_masks]
    return {
        "collated_masks": collated_masks,
        "mask_indices_list": mask_indices_list,
        "masks_weight": masks_weight,
        "n_masked_patches": torch.tensor([mask_indices_list.numel()], dtype=torch.long),
        "upperbound": upperbound,
    }


def collate_multicrop(
    samples: Sequence | dict,
    mask_generator: MaskingGenerator,
    mask_ratio: tuple[float, float] = (0.1, 0.5),
    mask_probability: float = 0.5,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> dict:
    """Pack crops and iBOT masks.

    Returns ``collated_global_crops`` (2B, C, G, G) crop-major, ``collated_local_crops``
    (N_local * B, C, L, L), ``collated_masks`` (2B, n_tokens) bool, ``mask_indices_list`` (flat
    indices of masked tokens), ``masks_weight`` (1 / masked count of each masked token's image),
    ``n_masked_patches`` (1,) long, ``upperbound`` (int, masked-token bound for buffer sizing) and,
    with Bag-of-Channels, ``channel_index`` (B,). A fraction `mask_probability` of the global
    crops get masks whose ratios are stratified over `mask_ratio`; the rest are unmasked, shuffled.
    """
    check_range(mask_ratio, "mask_ratio", low=0.0)
    if mask_ratio[1] > 1.0 or not 0.0 <= mask_probability <= 1.0:
        raise ValueError(
            f"mask_ratio must lie in [0, 1] and mask_probability in [0, 1], "
            f"got {mask_ratio}, {mask_probability}"
        )
    samples = _unwrap(samples)
    glob = _crops(samples, "global_crops")
    if glob is None:
        raise ValueError("samples have no global crops")
    local = _crops(samples, "local_crops")
    if local is None:
        local = glob.new_zeros((0, *glob.shape[1:2], 0, 0))
    out = {
        "collated_global_crops": glob.to(dtype),
        "collated_local_crops": local.to(dtype),
        **sample_ibot_masks(glob.shape[0], mask_generator, mask_ratio, mask_probability, generator),
    }
    if isinstance(samples, dict):
        if "channel_index" in samples:
            out["channel_index"] = samples["channel_index"]
    elif "channel_index" in samples[0]:
        out["channel_index"] = torch.tensor([s["channel_index"] for s in samples], dtype=torch.long)
    return out


class MaskCollator:
    """Picklable DataLoader `collate_fn` around `collate_multicrop` with a fixed mask generator."""

    def __init__(
        self,
        global_crops_size: int = 224,
        patch_size: int = 14,
        mask_ratio: tuple[float, float] = (0.1, 0.5),
        mask_probability: float = 0.5,
        min_num_patches: int = 4,
        max_num_patches_ratio: float = 0.5,
        min_aspect: float = 0.3,
        strict_blocks: bool = True,
        dtype: torch.dtype = torch.float32,
        seed: int | None = None,
    ):
        if patch_size < 1 or global_crops_size % patch_size:
            raise ValueError(
                f"global_crops_size {global_crops_size} must be a multiple of patch_size {patch_size}"
            )
        if not 0.0 < max_num_patches_ratio <= 1.0:
            raise ValueError(f"max_num_patches_ratio must be in (0, 1], got {max_num_patches_ratio}")
        check_range(mask_ratio, "mask_ratio", low=0.0)
        if mask_ratio[1] > 1.0 or not 0.0 <= mask_probability <= 1.0:
            raise ValueError(
                f"mask_ratio must lie in [0, 1] and mask_probability in [0, 1], "
                f"got {mask_ratio}, {mask_probability}"
            )
        side = global_crops_size // patch_size
        self.mask_generator = MaskingGenerator(
            side, max_num_patches_ratio * side * side, min_num_patches, min_aspect, strict=strict_blocks
        )
        self.mask_ratio, self.mask_probability, self.dtype = tuple(mask_ratio), mask_probability, dtype
        self.generator = None if seed is None else torch.Generator().manual_seed(int(seed))

    @classmethod
    def from_config(
        cls, cfg: AugmentConfig, dtype: torch.dtype = torch.float32, seed: int | None = None
    ) -> MaskCollator:
        m = cfg.masking
        return cls(
            cfg.crops.global_crops_size,
            m.patch_size,
            m.mask_ratio,
            m.mask_probability,
            m.min_num_patches,
            m.max_num_patches_ratio,
            m.min_aspect,
            m.strict_blocks,
            dtype,
            seed,
        )

    def masks(self, n_crops: int) -> dict:
        """iBOT masks alone for `n_crops` global crops (the device-side path cuts the crops later)."""
        return sample_ibot_masks(
            n_crops, self.mask_generator, self.mask_ratio, self.mask_probability, self.generator
        )

    def __call__(self, samples: Sequence | dict) -> dict:
        return collate_multicrop(
            samples, self.mask_generator, self.mask_ratio, self.mask_probability, self.dtype, self.generator
        )
