"""Headless segmentation API: tiling, bilinear mapping, cache, channels, stacks, save/load, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cellfm.models import BagOfChannels, VisionTransformer, ViTArch
from cellfm.segment import (
    FeatureCache,
    FeatureExtractor,
    FilterBank,
    ScribbleSegmenter,
    Tiling,
    channel_mode,
    instances,
    remove_small,
)
from cellfm.segment.classifier import ForestClassifier
from cellfm.segment.image import ChannelNorm
from cellfm.segment.tiling import owned_ranges, sample_points, tile_starts, upsample_rows


def tiny(in_chans: int = 1, patch: int = 8) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(ViTArch(embed_dim=32, depth=1, num_heads=2, patch_size=patch, in_chans=in_chans))


def blobs(shape=(64, 64), seed=0, n=6) -> tuple[np.ndarray, np.ndarray]:
    """Bright discs on a noisy dim background and their mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, bool)
    for _ in range(n):
        cy, cx = rng.integers(8, shape[0] - 8), rng.integers(8, shape[1] - 8)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < 36
    img = 100 + 800 * mask + rng.normal(0, 40, shape)
    return img.astype(np.uint16), mask


def scribbles_from(mask: np.ndarray, step: int = 5) -> np.ndarray:
    s = np.zeros(mask.shape, np.uint8)
    grid = np.zeros(mask.shape, bool)
    grid[::step, ::step] = True
    from scipy import ndimage as ndi

    s[grid & ndi.binary_erosion(mask)] = 2
    s[grid & ~ndi.binary_dilation(mask, iterations=2)] = 1
    return s


def test_bilinear_mapping_matches_torch_interpolate():
    rng = np.random.default_rng(1)
    grid = rng.normal(size=(3, 5, 7)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(grid)[None], size=(5 * 14, 7 * 14), mode="bilinear")[0].numpy()
    np.testing.assert_allclose(upsample_rows(grid, (0, 70), 98, 14), ref, atol=1e-5)
    np.testing.assert_allclose(upsample_rows(grid, (13, 29), 98, 14), ref[:, 13:29], atol=1e-5)
    ys, xs = rng.integers(0, 70, 50), rng.integers(0, 98, 50)
    np.testing.assert_allclose(sample_points(grid, ys, xs, 14), ref[:, ys, xs].T, atol=1e-5)


def test_tile_plan_covers_every_cell_once():
    for n, t, o in [(10, 4, 2), (37, 37, 4), (5, 8, 2), (100, 37, 4)]:
        starts = tile_starts(n, min(t, n), o)
        owned = owned_ranges(starts, min(t, n), n)
        cover = np.concatenate([np.arange(a, b) for a, b in owned])
        np.testing.assert_array_equal(cover, np.arange(n))
        for s, (a, b) in zip(starts, owned):
            assert s <= a and b <= s + min(t, n)


@torch.inference_mode()
def test_tiled_features_equal_each_tiles_own_pass():
    bb = tiny()
    x = np.random.default_rng(0).normal(size=(1, 64, 72)).astype(np.float32)
    whole = FeatureExtractor(bb, tiling=Tiling(tile=512, overlap=0)).patch_features(x)
    direct = bb.get_intermediate_layers(torch.from_numpy(x)[None], 1, reshape=True)[0][0].numpy()
    np.testing.assert_allclose(whole, direct, atol=1e-5)
    tiled = FeatureExtractor(bb, tiling=Tiling(tile=32, overlap=16, batch_size=3)).patch_features(x)
    assert tiled.shape == (32, 8, 9)
    first = bb.get_intermediate_layers(torch.from_numpy(x[:, :32, :32])[None], 1, reshape=True)[0][0].numpy()
    np.testing.assert_allclose(tiled[:, :2, :2], first[:, :2, :2], atol=1e-5)
    assert not np.allclose(tiled, whole, atol=1e-3)  # tiles really ran on crops


def test_non_multiple_sizes_are_padded_and_cropped():
    img, mask = blobs((50, 61))
    seg = ScribbleSegmenter(tiny()).fit(img, scribbles_from(mask))
    assert seg.predict(img).shape == (50, 61)
    assert seg.predict_proba(img).shape == (2, 50, 61)


def test_fit_predict_2d_and_cache_reuse():
    img, mask = blobs()
    cache = FeatureCache()
    seg = ScribbleSegmenter(tiny(), cache=cache).fit(img, scribbles_from(mask))
    assert cache.misses == 1 and len(cache) == 1
    proba = seg.predict_proba(torch.from_numpy(img.astype(np.float32)))  # tensors work too
    assert proba.shape == (2, 64, 64) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(0), 1, atol=1e-5)
    labels = seg.predict(img)
    assert set(np.unique(labels)) <= {1, 2}
    f1 = 2 * ((labels == 2) & mask).sum() / ((labels == 2).sum() + mask.sum())
    assert f1 > 0.9
    # a second scribble round reuses the cached patch features
    misses = cache.misses
    seg.fit(img, scribbles_from(mask, step=7))
    assert cache.misses == misses
    seg.extractor._recent.clear()  # even without the in-memory shortcut, the cache answers
    seg.predict(img)
    assert cache.misses == misses and cache.hits >= 1


def test_linear_scores_equal_classifier_on_dense_features():
    img, mask = blobs()
    seg = ScribbleSegmenter(tiny(), classifier="logistic", select=False).fit(img, scribbles_from(mask))
    assert seg.projection is not None  # the patch grid is projected first, and projection is linear too
    feats = seg._view(seg.extractor.features(img[None], seg.norm))
    dense = feats.dense_rows(0, 64).reshape(feats.num_features, -1).T
    ref = seg.classifier.predict_proba(dense).T.reshape(2, 64, 64)
    np.testing.assert_allclose(seg.predict_proba(img), ref, atol=1e-4)


def test_filters_on_strips_equal_whole_image():
    x = np.random.default_rng(0).random((2, 80, 40)).astype(np.float32)
    bank = FilterBank()
    whole = bank.compute(x)
    assert whole.shape == (bank.num_features(2), 80, 40) == (len(bank.names(2)), 80, 40)
    np.testing.assert_allclose(bank.compute(x, (30, 55)), whole[:, 30:55], atol=1e-5)


def test_channel_modes_and_errors():
    assert channel_mode(tiny(1), 4) == "per_channel"
    assert channel_mode(tiny(4), 4) == "native"
    assert channel_mode(tiny(3), 1) == "repeat"
    assert channel_mode(BagOfChannels(tiny(1)), 5) == "native"
    with pytest.raises(ValueError, match="in_chans=4"):
        channel_mode(tiny(4), 2)


@pytest.mark.parametrize("backbone", ["per_channel", "native"])
def test_multichannel_channel_last(backbone):
    img, mask = blobs()
    rng = np.random.default_rng(3)
    noise = rng.normal(500, 50, img.shape).astype(np.uint16)
    yxc = np.stack([noise, img, noise[::-1]], axis=-1)  # (H, W, C): channel axis last
    seg = ScribbleSegmenter(tiny(1 if backbone == "per_channel" else 3), channel_axis=-1)
    with pytest.raises(ValueError, match="spatial axis"):
        seg.fit(yxc, scribbles_from(mask))
    chw = np.moveaxis(yxc, -1, 0)
    seg = ScribbleSegmenter(tiny(1 if backbone == "per_channel" else 3), channel_axis=0)
    seg.fit(chw, scribbles_from(mask))
    feats = seg.extractor.features(chw, seg.norm)
    assert feats.num_patch_features == (96 if backbone == "per_channel" else 32)
    assert feats.num_filter_features == 39  # 3 channels x (intensity + 3 filters x 4 sigmas)
    labels = seg.predict(chw)
    assert labels.shape == (64, 64)
    assert 2 * ((labels == 2) & mask).sum() / ((labels == 2).sum() + mask.sum()) > 0.9
    with pytest.raises(ValueError, match="fitted on 3"):
        seg.predict(chw[:2])


def test_3d_stack_single_channel_and_time_by_channel():
    vol, mask = zip(*(blobs(seed=s) for s in range(3)))
    vol, mask = np.stack(vol), np.stack(mask)
    scrib = np.zeros(mask.shape, np.uint8)
    scrib[1] = scribbles_from(mask[1])  # scribbles on one slice only
    cache = FeatureCache()
    seg = ScribbleSegmenter(tiny(), channel_axis=None, cache=cache).fit(vol, scrib)
    assert len(cache) == 1  # only the scribbled slice was encoded
    labels = seg.predict(vol)
    assert labels.shape == (3, 64, 64) and len(cache) == 3
    for z in range(3):
        assert 2 * ((labels[z] == 2) & mask[z]).sum() / ((labels[z] == 2).sum() + mask[z].sum()) > 0.85
    assert seg.predict_proba(vol).shape == (2, 3, 64, 64)
    # (T, C, Y, X): two channels, channel axis 1
    tcyx = np.stack([vol, vol[:, ::-1]], axis=1)
    seg2 = ScribbleSegmenter(tiny(), channel_axis=1).fit(tcyx, scrib)
    assert seg2.predict(tcyx).shape == (3, 64, 64)
    inst = seg2.predict_instances(tcyx, method="components")
    assert inst.shape == (3, 64, 64) and inst.max() >= 3
    assert len(np.intersect1d(np.unique(inst[0]), np.unique(inst[1]))) == 1  # only 0 shared


def test_input_errors_name_shapes():
    img, mask = blobs()
    seg = ScribbleSegmenter(tiny())
    with pytest.raises(ValueError, match=r"scribbles have shape \(10, 10\)"):
        seg.fit(img, np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="at least two classes"):
        seg.fit(img, (mask * 2).astype(np.uint8))
    with pytest.raises(ValueError, match="pass channel_axis explicitly"):
        seg.fit(np.zeros((2, 2, 64, 64)), np.zeros((2, 2, 64, 64), np.uint8))
    with pytest.raises(RuntimeError, match="not fitted"):
        seg.predict(img)
    with pytest.raises(ValueError, match="unknown classifier"):
        ScribbleSegmenter(tiny(), classifier="svm")
    scrib = scribbles_from(mask)
    nan = img.astype(np.float32)
    nan[3, 4] = np.nan
    with pytest.raises(ValueError, match="1 NaN or infinite pixels"):
        seg.fit(nan, scrib)
    fitted = ScribbleSegmenter(tiny()).fit(img, scrib)
    with pytest.raises(ValueError, match="NaN"):
        fitted.predict(nan)
    with pytest.raises(ValueError, match="at least two classes"):  # strokes of one class only
        seg.fit(img, np.where(scrib == 2, 2, 0).astype(np.uint8))


def test_one_pixel_wide_image_segments():
    img = np.zeros((40, 1), np.float32)
    img[20:] = 1.0
    scrib = np.zeros((40, 1), np.uint8)
    scrib[:5], scrib[-5:] = 1, 2
    seg = ScribbleSegmenter(tiny()).fit(img, scrib)
    labels = seg.predict(img)
    assert labels.shape == (40, 1) and labels[0, 0] == 1 and labels[-1, 0] == 2


def test_stroke_selection_and_projection_roundtrip(tmp_path):
    img, mask = blobs(seed=2)
    seg = ScribbleSegmenter(tiny()).fit(img, scribbles_from(mask, step=9))
    assert seg.classifier_kind == "random_forest" and seg.projection.components.shape == (16, 32)
    assert set(seg.selection_scores) == {"filters", "filters + backbone"}
    assert seg.feature_set in seg.selection_scores
    labels, proba = seg.predict(img, return_proba=True)
    np.testing.assert_array_equal(labels, seg.predict(img))
    np.testing.assert_allclose(proba, seg.predict_proba(img), atol=1e-6)
    loaded = ScribbleSegmenter.load(seg.save(tmp_path / "s"), tiny())
    assert loaded.feature_set == seg.feature_set and loaded.classifier._model is None  # rebuilt trees
    np.testing.assert_allclose(loaded.predict_proba(img), proba, atol=1e-6)


@pytest.mark.parametrize("kind", ["logistic", "random_forest"])
def test_save_load_roundtrip(tmp_path, kind):
    img, mask = blobs()
    seg = ScribbleSegmenter(tiny(), classifier=kind).fit(img, scribbles_from(mask))
    path = seg.save(tmp_path / "seg")
    assert path.suffix == ".npz"
    loaded = ScribbleSegmenter.load(path, tiny())
    np.testing.assert_allclose(loaded.predict_proba(img), seg.predict_proba(img), atol=1e-6)
    other = tiny()
    torch.nn.init.normal_(other.cls_token)
    with pytest.raises(ValueError, match="trained with backbone"):
        ScribbleSegmenter.load(path, other)


def test_forest_arrays_match_sklearn():
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 5)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] ** 2 > 0.5).astype(int) + (X[:, 2] > 1)
    clf = ForestClassifier(n_estimators=7, max_depth=6).fit(X, y)
    ref = RandomForestClassifier(7, max_depth=6, random_state=0, class_weight="balanced", n_jobs=-1).fit(X, y)
    np.testing.assert_allclose(clf.predict_proba(X), ref.predict_proba(X), atol=1e-5)


def test_postprocess_small_objects_and_watershed():
    labels = np.ones((40, 40), np.uint8)
    labels[2:4, 2:4] = 2  # 4 px speck
    labels[10:30, 10:30] = 2
    clean = remove_small(labels, 10, background=1)
    assert clean[2, 2] == 1 and clean[20, 20] == 2
    yy, xx = np.mgrid[:40, :60]
    touching = ((yy - 20) ** 2 + (xx - 19) ** 2 < 100) | ((yy - 20) ** 2 + (xx - 36) ** 2 < 100)
    assert instances(touching, "components").max() == 1
    assert instances(touching, "watershed", min_distance=5).max() == 2


def test_channel_norm_roundtrip_and_scaling():
    stack = np.random.default_rng(0).integers(0, 4000, (2, 3, 32, 32)).astype(np.uint16)
    norm = ChannelNorm.from_stack(stack)
    assert ChannelNorm.from_dict(norm.to_dict()) == norm
    scaled = norm.scale(stack[0])
    assert scaled.min() >= 0 and scaled.max() <= 1 and scaled.dtype == np.float32
