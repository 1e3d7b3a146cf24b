"""CLS-token same-nucleus retrieval (cellfm.evaluation.cls_retrieval) on a synthetic stack."""

from __future__ import annotations

import numpy as np
import torch

from cellfm.evaluation import _centroid_crops, cls_embeddings, cls_retrieval
from cellfm.models import VisionTransformer, ViTArch


def tiny() -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(
        ViTArch(embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=64, in_chans=1, init_values=1.0)
    )
    model.init_weights()
    with torch.no_grad():  # a strong positional embedding: the CLS depends on where things are
        model.pos_embed.normal_(0.0, 1.0)
    return model.eval()


def blobs(seed: int = 0, n: int = 6, size: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """(3, size, size) stack of the same n asymmetric blobs (L-shapes of different sizes) + labels."""
    rng = np.random.default_rng(seed)
    img = rng.normal(100, 5, (size, size)).astype(np.float32)
    lab = np.zeros((size, size), np.uint32)
    centres = [(30 + 50 * (i // 3), 30 + 50 * (i % 3)) for i in range(n)]
    for i, (cy, cx) in enumerate(centres, start=1):
        a = 6 + i
        img[cy - a : cy + a, cx - a : cx - a + 5] += 400 + 40 * i
        img[cy + a - 5 : cy + a, cx - a : cx + a] += 400 + 40 * i
        lab[cy - a : cy + a, cx - a : cx + a] = i
    return np.stack([img, img, img]), np.stack([lab, lab, lab])


def test_raw_pixels_find_identical_slices_and_lose_them_rotated():
    stack, labels = blobs()
    pairs = ((0, 1), (1, 2))
    assert cls_retrieval(None, stack, labels, False, pairs, size=32) == 1.0
    assert cls_retrieval(None, stack, labels, True, pairs, size=32) < 1.0


def test_crops_are_centred_and_padded():
    stack, labels = blobs()
    crops = _centroid_crops(stack[0], labels[0], 48)
    assert sorted(crops) == [1, 2, 3, 4, 5, 6]
    assert all(c.shape == (48, 48) for c in crops.values())


def test_dihedral_averaged_cls_is_exactly_rotation_invariant():
    model = tiny()
    stack, labels = blobs()
    crops = _centroid_crops(stack[0], labels[0], 32)
    plain, turned = cls_embeddings(model, crops), cls_embeddings(model, crops, rotate=True)
    assert max(np.abs(plain[i] - turned[i]).max() for i in crops) > 1e-3  # a random ViT is not invariant
    avg, avg_turned = (
        cls_embeddings(model, crops, tta=True),
        cls_embeddings(model, crops, rotate=True, tta=True),
    )
    for i in crops:
        np.testing.assert_allclose(avg[i], avg_turned[i], atol=1e-4)
    pairs = ((0, 1),)
    assert cls_retrieval(model, stack, labels, True, pairs, size=32, tta=True) == cls_retrieval(
        model, stack, labels, False, pairs, size=32, tta=True
    )


def test_encoder_cls_tta_is_invariant_and_keeps_patches():
    """`cellfm embed --cls-tta`: the CLS of a rotated / mirrored field equals the field's own; patch
    maps are the plain forward's (fails if the symmetries are not averaged)."""
    from cellfm.embed.encoder import Encoder

    model = tiny()
    x = torch.randn(2, 1, 32, 32)
    plain, tta = Encoder(model, ["DNA"]), Encoder(model, ["DNA"], cls_tta=True)
    cls, patches = tta(x)
    for y in (torch.rot90(x, 1, dims=(-2, -1)), x.flip(-2)):
        torch.testing.assert_close(tta(y)[0], cls, atol=1e-4, rtol=1e-4)
        assert (plain(y)[0] - plain(x)[0]).abs().max() > 1e-3
    torch.testing.assert_close(patches, plain(x)[1])


def test_table_leaves_the_random_column_blank_without_the_baseline():
    from cellfm.evaluation import format_evaluation

    scores = {"model": 0.9, "raw_pixels": 0.7, "model_rotated90": 0.5, "raw_pixels_rotated90": 0.1}
    res = {"patch_probe_f1": {"model": 0.94, "raw_pixels": 0.73}, "retrieval_top1": dict(scores)}
    res["cls_retrieval_top1"] = dict(scores)
    table = format_evaluation(res)  # as `cellfm eval --no-random` prints it
    assert "nan" not in table and "| 0.940 |  | 0.730 |" in table
    res["patch_probe_f1"]["random_init"] = 0.85
    assert "| 0.940 | 0.850 | 0.730 |" in format_evaluation(res)
