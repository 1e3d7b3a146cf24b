"""The batched device-side multi-crop against the per-sample MultiCrop: same pixels where the
randomness is fixed, same distributions where it is not, on every available device."""

import math

import numpy as np
import pytest
import torch
from cellfm.transforms import (
    BlurConfig,
    ChannelConfig,
    FactorConfig,
    GaussianNoiseConfig,
    GeometryConfig,
    IntensityConfig,
    MultiCrop,
    NormalizeConfig,
    load_augment_config,
    resized_crop,
    sample_crop_box,
)
from cellfm.transforms import multicrop as multicrop_module
from cellfm.transforms.batched import BatchedMultiCrop, draw_boxes, widen
from cellfm.transforms.intensity import gaussian_blur
from cellfm.transforms.resample import _resample_group, apply_parts, blur_square, resample_boxes
from scipy.stats import ks_2samp

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
NO_INTENSITY = IntensityConfig(brightness=FactorConfig(p=0.0), contrast=FactorConfig(p=0.0))


def uint16_fields(b: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    base = rng.gamma(2.0, 300.0, size=(b, 1, size, size))
    x = base * (1 + 0.3 * np.arange(c)[None, :, None, None]) + rng.normal(0, 20, (b, c, size, size))
    return torch.from_numpy(x.clip(0, 65535).astype(np.uint16))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["bicubic", "bilinear", "nearest"])
@pytest.mark.parametrize("antialias", [False, True])
def test_resample_boxes_gives_resized_crop_pixels(device, mode, antialias):
    x = torch.rand(3, 2, 90, 70, generator=torch.Generator().manual_seed(1)) * 5
    boxes = torch.tensor(
        [
            [5, 7, 50, 60],
            [0, 0, 90, 70],
            [0, 0, 80, 66],
            [30, 40, 20, 17],
            [10, 3, 32, 32],
            [1, 2, 88, 33],
            [60, 50, 9, 12],
        ]
        * 3
    )  # shrinking, upsampling, identity size, mixed
    image = torch.arange(len(boxes)) % 3
    out = resample_boxes(x.to(device), image.to(device), boxes.to(device), 32, mode, antialias).cpu()
    grouped = _resample_group(x, image, boxes, 32, mode, antialias)  # the accelerator code, on CPU
    for n, box in enumerate(boxes.tolist()):
        ref = resized_crop(x[image[n]], tuple(box), 32, mode, antialias)
        torch.testing.assert_close(out[n], ref, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(grouped[n], ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("dihedral", [True, False])
def test_symmetries_are_the_per_sample_ops(dihedral):
    geo = GeometryConfig(dihedral=dihedral)
    bm = BatchedMultiCrop(MultiCrop(8, 4, 1, geometry=geo))
    y = torch.randn(8 if dihedral else 4, 2, 8, 8)
    choice = torch.arange(y.shape[0])
    out = bm.symmetries(y, choice)
    for k in range(y.shape[0]):
        if dihedral:
            ref = torch.rot90(y[k], k % 4, dims=(-2, -1))
            ref = ref.flip(-1) if k >= 4 else ref
        else:
            ref = y[k].flip(-1) if k & 1 else y[k]
            ref = ref.flip(-2) if k & 2 else ref
        assert torch.equal(out[k], ref), k


@pytest.mark.parametrize("dihedral", [True, False])
def test_symmetries_folded_into_the_resampling_weights_are_the_gathered_ones(dihedral):
    """CPU folds each crop's symmetry into its banded weights (swapped height / width weights,
    reversed rows): the same pixels as resampling and then gathering, for every symmetry."""
    bm = BatchedMultiCrop(MultiCrop(8, 4, 1, geometry=GeometryConfig(dihedral=dihedral)))
    x = torch.rand(3, 2, 150, 130, generator=torch.Generator().manual_seed(4))
    k = 8 if dihedral else 4
    boxes = torch.tensor([[5, 7, 120, 100], [0, 0, 150, 130], [30, 40, 50, 61], [9, 3, 64, 64]] * k)
    image = torch.arange(len(boxes)) % 3
    choice = torch.arange(len(boxes)) % k
    for size in (64, 100):  # several banded blocks per crop; shrinking and upsampling boxes
        plain = resample_boxes(x, image, boxes, size, "bicubic", True)
        folded = resample_boxes(x, image, boxes, size, "bicubic", True, parts=bm._parts(x.device)[choice])
        torch.testing.assert_close(folded, bm.symmetries(plain, choice), atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(
            apply_parts(plain, bm._parts(x.device)[choice]), bm.symmetries(plain, choice)
        )


@pytest.mark.parametrize("size", [4, 9, 64, 150])
def test_blur_as_banded_products_is_the_depthwise_convolution(size):
    """CPU blurs square crops as G @ y @ G^T: the same pixels as `gaussian_blur` (its radius from the
    largest sigma, reflect padding; replicate once the radius reaches the crop size)."""
    g = torch.Generator().manual_seed(size)
    y = torch.randn(5, 3, size, size, generator=g)
    sigma = torch.tensor([0.1, 0.4, 1.0, 1.5, 0.7])
    torch.testing.assert_close(blur_square(y, sigma), gaussian_blur(y, sigma), atol=1e-5, rtol=1e-5)


def test_same_boxes_give_the_same_normalised_crops(monkeypatch):
    """Fix the boxes both paths use: the whole pipeline (percentile in, crop, z-score out) agrees."""
    x = uint16_fields(3, 4, 80)
    mc = MultiCrop(32, 16, 3, geometry=GeometryConfig(dihedral=False, p_horizontal_flip=0.0,
                                                    p_vertical_flip=0.0), intensity=NO_INTENSITY)  # fmt: skip
    bm = BatchedMultiCrop(mc)
    g = torch.Generator().manual_seed(3)
    drawn = []
    original = draw_boxes

    def recording(*args, **kwargs):
        drawn.append(original(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr("cellfm.transforms.batched.draw_boxes", recording)
    out = bm(widen(x), g, native_dtype=torch.uint16)
    queue = [tuple(b) for boxes in drawn for b in boxes.tolist()]
    monkeypatch.setattr(multicrop_module, "sample_crop_box", lambda *a, **k: queue.pop(0))
    ref = mc.batch(x)
    assert not queue
    torch.testing.assert_close(out["global_crops"], torch.cat(ref["global_crops"]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["local_crops"], torch.cat(ref["local_crops"]), atol=1e-4, rtol=1e-4)


def test_box_scale_and_aspect_distributions_match_sample_crop_box():
    h, w, scale, ratio = 90, 120, (0.05, 0.32), (3 / 4, 4 / 3)
    g = torch.Generator().manual_seed(0)
    ref = np.array([sample_crop_box(h, w, scale, ratio, g) for _ in range(3000)], dtype=float)
    new = draw_boxes(3000, h, w, scale, ratio, g, torch.device("cpu")).double().numpy()
    for a, b in ((ref, new),):
        area_a, area_b = a[:, 2] * a[:, 3] / (h * w), b[:, 2] * b[:, 3] / (h * w)
        assert ks_2samp(area_a, area_b).statistic < 0.04
        assert ks_2samp(np.log(a[:, 3] / a[:, 2]), np.log(b[:, 3] / b[:, 2])).statistic < 0.04
        assert ks_2samp(a[:, 0] + a[:, 2] / 2, b[:, 0] + b[:, 2] / 2).statistic < 0.04  # centre y
    assert (
        (new[:, 0] >= 0).all() and (new[:, 0] + new[:, 2] <= h).all() and (new[:, 1] + new[:, 3] <= w).all()
    )
    # no draw fits (scale above what a 1:10 strip allows): the same centred fallback
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    fallback = sample_crop_box(10, 100, (0.9, 1.0), (0.9, 1.1), g1)
    assert (
        draw_boxes(4, 10, 100, (0.9, 1.0), (0.9, 1.1), g2, torch.device("cpu")).tolist()
        == [list(fallback)] * 4
    )


def _which_symmetry(crop: torch.Tensor, source: torch.Tensor) -> int:
    ops = [torch.rot90(source, k, dims=(-2, -1)) for k in range(4)]
    ops += [op.flip(-1) for op in ops]
    return next(i for i, op in enumerate(ops) if torch.allclose(crop, op, atol=1e-4))


@pytest.mark.parametrize("dihedral", [True, False])
def test_symmetry_frequencies_match(dihedral):
    """Whole-field crops at the field's size: only the symmetry changes the pixels; both paths draw
    each symmetry equally often (flips with their own probabilities)."""
    geo = GeometryConfig(dihedral=dihedral, p_horizontal_flip=0.3, p_vertical_flip=0.7, ratio=(1.0, 1.0))
    mc = MultiCrop(8, 8, 0, (1.0, 1.0), (1.0, 1.0), geometry=geo, intensity=NO_INTENSITY,
                   input_norm=NormalizeConfig(), output_norm=NormalizeConfig())  # fmt: skip
    src = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    ref = [_which_symmetry(mc(src[0], g)["global_crops"][0], src[0]) for _ in range(600)]
    out = BatchedMultiCrop(mc)(src.expand(1200, 1, 8, 8), g)["global_crops"]
    new = [_which_symmetry(out[i], src[0]) for i in range(0, 2400, 2)]
    f_ref = np.bincount(ref, minlength=8) / len(ref)
    f_new = np.bincount(new, minlength=8) / len(new)
    if dihedral:
        assert np.abs(f_new - 1 / 8).max() < 0.035 and np.abs(f_ref - 1 / 8).max() < 0.05
    else:  # flips only: identity, h (rot0+flip = op 4), v (op 6), both (rot180 = op 2)
        expect = {0: 0.7 * 0.3, 4: 0.3 * 0.3, 6: 0.7 * 0.7, 2: 0.3 * 0.7}
        for op, p in expect.items():
            assert abs(f_new[op] - p) < 0.04 and abs(f_ref[op] - p) < 0.06, (op, f_new, f_ref)


def _crop_stats(crops: torch.Tensor) -> dict[str, np.ndarray]:
    flat = crops.flatten(2)
    return {
        "mean": flat.mean(-1).flatten().numpy(),
        "std": flat.std(-1).flatten().numpy(),
        "zero": (flat == 0).all(-1).float().flatten().numpy(),
        "max": flat.amax(-1).flatten().numpy(),
    }


@pytest.mark.parametrize("nonlinear", [True, False])
def test_intensity_statistics_match_over_many_draws(nonlinear):
    """The cellpainting5 recipe (smaller crops): per crop and channel, the distributions of means,
    stds, maxima and dropped channels agree between the two paths."""
    cfg = load_augment_config("cellpainting5")
    cfg.crops.global_crops_size, cfg.crops.local_crops_size, cfg.crops.local_crops_number = 28, 14, 4
    if nonlinear:  # the op-by-op path; without them the folded one
        cfg.intensity.gamma.p, cfg.intensity.poisson_noise.p = 0.3, 0.3
    mc = MultiCrop.from_config(cfg)
    assert BatchedMultiCrop(mc).fold_affine is not nonlinear
    x = uint16_fields(6, 5, 64)
    g = torch.Generator().manual_seed(0)
    ref = {"global_crops": [], "local_crops": []}
    for r in range(40):
        out = mc(x[r % 6], g)
        for key in ref:
            ref[key] += out[key]
    new = BatchedMultiCrop(mc)(widen(x.repeat(10, 1, 1, 1)), g, native_dtype=torch.uint16)
    for key in ref:
        a, b = _crop_stats(torch.stack(ref[key])), _crop_stats(new[key])
        for stat in a:
            assert ks_2samp(a[stat], b[stat]).pvalue > 1e-3, (key, stat)  # seeded: deterministic
        assert abs(a["zero"].mean() - b["zero"].mean()) < 0.03  # drop_p 0.2 of 5 channels: 4%


def test_brightness_contrast_noise_parameters_follow_the_recipe():
    """Constant unit fields with identity normalisation: each crop channel equals its brightness
    factor; contrast leaves constants alone; noise adds N(0, sigma) with sigma ~ U(range)."""
    ints = IntensityConfig(brightness=FactorConfig(p=0.6, std=0.2, minimum=0.7), contrast=FactorConfig(p=1.0),
                           gaussian_noise=GaussianNoiseConfig(p=0.0))  # fmt: skip
    mc = MultiCrop(8, 8, 0, intensity=ints, input_norm=NormalizeConfig(), output_norm=NormalizeConfig())
    ones = torch.ones(2000, 3, 16, 16)
    f = BatchedMultiCrop(mc)(ones, torch.Generator().manual_seed(0))["global_crops"]
    assert torch.allclose(f, f[..., :1, :1].expand_as(f), atol=1e-5)
    f = f[:, :, 0, 0]
    unchanged = ((f - 1).abs() < 1e-5).all(1).float().mean()
    assert abs(unchanged - 0.4) < 0.03 and f.min() >= 0.7 - 1e-6
    ref = torch.cat(mc.batch(ones[:400], torch.Generator().manual_seed(1))["global_crops"])[:, :, 0, 0]
    assert ks_2samp(f.flatten().numpy(), ref.flatten().numpy()).statistic < 0.05
    noisy = MultiCrop(32, 8, 0, intensity=IntensityConfig(gaussian_noise=GaussianNoiseConfig(p=1.0, sigma=(0.1, 0.3)),
                      brightness=FactorConfig(p=0.0), contrast=FactorConfig(p=0.0)),
                      input_norm=NormalizeConfig(), output_norm=NormalizeConfig())  # fmt: skip
    n = BatchedMultiCrop(noisy)(torch.zeros(500, 1, 64, 64), torch.Generator().manual_seed(0))["global_crops"]
    s = n.flatten(1).std(1)
    assert 0.1 * 0.88 < float(s.min()) and float(s.max()) < 0.3 * 1.12  # std of 1024 px: +-3%
    assert abs(float(s.mean()) - 0.2) < 0.01


@pytest.mark.parametrize("device", DEVICES)
def test_seeded_reproducible_dtype_and_shapes(device):
    cfg = load_augment_config("cellpainting5")
    cfg.crops.global_crops_size, cfg.crops.local_crops_size = 56, 28
    bm = BatchedMultiCrop.from_config(cfg, dtype=torch.bfloat16)
    x = widen(uint16_fields(3, 5, 70).to(device))
    a = bm(x, torch.Generator(device).manual_seed(5), native_dtype=torch.uint16)
    b = bm(x, torch.Generator(device).manual_seed(5), native_dtype=torch.uint16)
    c = bm(x, torch.Generator(device).manual_seed(6), native_dtype=torch.uint16)
    assert a["global_crops"].shape == (6, 5, 56, 56) and a["local_crops"].shape == (24, 5, 28, 28)
    assert a["global_crops"].dtype == torch.bfloat16 and a["global_crops"].device.type == device
    assert torch.equal(a["global_crops"], b["global_crops"]) and torch.equal(
        a["local_crops"], b["local_crops"]
    )
    assert not torch.equal(a["global_crops"], c["global_crops"])
    assert torch.isfinite(a["local_crops"].float()).all()


def test_widen_keeps_uint16_values_carried_as_int16():
    x = torch.tensor([[0, 1, 32767, 32768, 65535]], dtype=torch.int64).to(torch.uint16)
    carried = torch.from_numpy(x.numpy().view(np.int16))
    assert widen(carried, torch.uint16).tolist() == [[0, 1, 32767, 32768, 65535]]
    assert widen(x).dtype == torch.int32 and widen(x).tolist() == [[0, 1, 32767, 32768, 65535]]


def test_range_normalisation_uses_the_native_dtype():
    mc = MultiCrop(8, 8, 0, (1.0, 1.0), (1.0, 1.0), intensity=NO_INTENSITY,
                   input_norm=NormalizeConfig(mode="range"), output_norm=NormalizeConfig())  # fmt: skip
    x = torch.full((2, 1, 8, 8), 65535, dtype=torch.int64).to(torch.uint16)
    out = BatchedMultiCrop(mc)(widen(x), torch.Generator(), native_dtype=torch.uint16)["global_crops"]
    assert torch.allclose(out, torch.ones_like(out))


def test_bag_of_channels_picks_by_weight_and_rescales_protected():
    ch = ChannelConfig(bag_of_channels=True, channel_weights=[1.0, 0.0, 3.0], protected=[2], rescale_p=1.0,
                       rescale_range=(2.0, 2.0))  # fmt: skip
    mc = MultiCrop(8, 4, 1, channels=ch, intensity=NO_INTENSITY, input_norm=NormalizeConfig(),
                   output_norm=NormalizeConfig())  # fmt: skip
    x = torch.ones(4000, 3, 12, 12)
    out = BatchedMultiCrop(mc)(x, torch.Generator().manual_seed(0))
    idx = out["channel_index"]
    assert out["global_crops"].shape == (8000, 1, 8, 8)
    assert (idx != 1).all() and abs(float((idx == 2).float().mean()) - 0.75) < 0.03
    value = out["global_crops"][:4000, 0, 0, 0]
    assert torch.allclose(value, torch.where(idx == 2, 2.0, 1.0), atol=1e-5)


def test_bad_input_names_the_region():
    mc = MultiCrop(16, 8, 2, channels=ChannelConfig(num_channels=3))
    bm = BatchedMultiCrop(mc)
    x = torch.rand(2, 3, 20, 20)
    x[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"plate.zarr/B/2/0: region of shape \(3, 20, 20\) has 1 NaN"):
        bm(x, names=["plate.zarr/A/1/0", "plate.zarr/B/2/0"])
    with pytest.raises(ValueError, match="has 2 channels .* expects 3"):
        bm(torch.rand(2, 2, 20, 20))
    with pytest.raises(ValueError, match="smaller than the 16 px crop"):
        bm(torch.rand(2, 3, 12, 30))
    with pytest.raises(ValueError, match="no elastic warp"):
        BatchedMultiCrop(MultiCrop(16, 8, 2, geometry=GeometryConfig(elastic_p=0.5)))
    fixed = BatchedMultiCrop(MultiCrop(16, 8, 2, nan_policy="replace"))(x, torch.Generator())
    assert all(torch.isfinite(v).all() for v in fixed.values())


def test_blur_is_applied_with_its_probability_per_crop_position():
    ints = IntensityConfig(brightness=FactorConfig(p=0.0), contrast=FactorConfig(p=0.0),
                           blur=BlurConfig(p_global=(1.0, 0.0), p_local=0.5, sigma=(1.0, 1.0)))  # fmt: skip
    mc = MultiCrop(16, 16, 2, (1.0, 1.0), (1.0, 1.0), geometry=GeometryConfig(dihedral=False, p_horizontal_flip=0,
                   p_vertical_flip=0), intensity=ints, input_norm=NormalizeConfig(), output_norm=NormalizeConfig())  # fmt: skip
    x = torch.zeros(400, 1, 16, 16)
    x[:, :, 8, 8] = 1.0
    out = BatchedMultiCrop(mc)(x, torch.Generator().manual_seed(0))
    peak = lambda t: t[:, 0, 8, 8]  # noqa: E731 - 1 unless blurred
    g = out["global_crops"]
    assert (peak(g[:400]) < 1).all() and (peak(g[400:]) == 1).all()
    assert abs(float((peak(out["local_crops"]) < 1).float().mean()) - 0.5) < 0.05
    assert math.isclose(float(g[0].sum()), 1.0, rel_tol=1e-5)  # blur keeps the mass


@pytest.mark.parametrize("bag_of_channels", [False, True])
def test_folded_affine_tail_equals_the_op_by_op_path(bag_of_channels):
    """Brightness/contrast/blur/noise/rescale/output norm/drop folded into one multiply-add give
    the crops the op-by-op path gives for the same generator state."""
    cfg = load_augment_config("cellpainting5")
    cfg.crops.global_crops_size, cfg.crops.local_crops_size, cfg.crops.local_crops_number = 28, 14, 3
    cfg.intensity.gaussian_noise.p, cfg.intensity.blur.p_local = 0.5, 0.5
    cfg.channels.protected, cfg.channels.rescale_p = [0, 3], 0.5
    cfg.channels.bag_of_channels = bag_of_channels
    folded = BatchedMultiCrop.from_config(cfg)
    stepwise = BatchedMultiCrop.from_config(cfg)
    stepwise.fold_affine = False
    assert folded.fold_affine
    x = widen(uint16_fields(8, 5, 48))
    a = folded(x, torch.Generator().manual_seed(2))
    b = stepwise(x, torch.Generator().manual_seed(2))
    for key in ("global_crops", "local_crops"):
        torch.testing.assert_close(a[key], b[key], atol=2e-4, rtol=1e-4)
        assert torch.equal(a[key] == 0, b[key] == 0)  # dropped channels are exact zeros in both


def test_batched_refuses_same_box_global_pairs():
    with pytest.raises(ValueError, match="global_same_box_p"):
        BatchedMultiCrop(MultiCrop(16, 8, 2, geometry=GeometryConfig(global_same_box_p=0.5)))
