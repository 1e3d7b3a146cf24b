"""MultiCrop end to end: shapes, dtype, finiteness, determinism, channel invariants, bad input."""

import numpy as np
import pytest
import torch
from cellfm.transforms import (
    BlurConfig,
    ChannelConfig,
    FactorConfig,
    GeometryConfig,
    IntensityConfig,
    MultiCrop,
    NormalizeConfig,
)
from hypothesis import given, settings
from hypothesis import strategies as st

DTYPES = [torch.uint8, torch.uint16, torch.int32, torch.float32, torch.float64]


def small(**kw) -> MultiCrop:
    kw.setdefault("local_crops_number", 3)
    return MultiCrop(28, 14, **kw)


def field(c: int, h: int, w: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return (torch.rand(c, h, w, generator=g) * 3).to(dtype)
    hi = min(torch.iinfo(dtype).max, 60000)
    return torch.randint(0, hi, (c, h, w), generator=g, dtype=torch.int64).to(dtype)


@settings(max_examples=20, deadline=None)
@given(
    c=st.sampled_from([1, 2, 3, 5, 7]),
    dtype=st.sampled_from(DTYPES),
    h=st.integers(28, 70),
    w=st.integers(28, 70),
    seed=st.integers(0, 1000),
)
def test_shapes_dtype_finite_and_determinism(c, dtype, h, w, seed):
    mc = small(
        intensity=IntensityConfig(blur=BlurConfig(p_global=(1.0, 0.5), p_local=0.5)),
        channels=ChannelConfig(drop_p=0.5),
    )
    x = field(c, h, w, dtype, seed)
    out = mc(x, torch.Generator().manual_seed(seed))
    assert len(out["global_crops"]) == 2 and len(out["local_crops"]) == 3
    for t in out["global_crops"]:
        assert t.shape == (c, 28, 28) and t.dtype == torch.float32 and torch.isfinite(t).all()
    for t in out["local_crops"]:
        assert t.shape == (c, 14, 14) and t.dtype == torch.float32 and torch.isfinite(t).all()
    again = mc(x, torch.Generator().manual_seed(seed))
    for a, b in zip(out["global_crops"] + out["local_crops"], again["global_crops"] + again["local_crops"]):
        assert torch.equal(a, b)


def test_seed_argument_and_different_seeds_differ():
    x = field(3, 64, 64, torch.uint16)
    a, b = small(seed=1)(x), small(seed=1)(x)
    assert torch.equal(a["global_crops"][0], b["global_crops"][0])
    c = small(seed=2)(x)
    assert not torch.equal(a["global_crops"][0], c["global_crops"][0])


def test_numpy_input_and_zscore_output():
    x = field(2, 64, 64, torch.uint16).numpy()
    out = small(intensity=IntensityConfig(brightness=_off(), contrast=_off()), seed=0)(x)
    t = out["global_crops"][0]
    torch.testing.assert_close(t.mean(dim=(1, 2)), torch.zeros(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(t.std(dim=(1, 2), correction=0), torch.ones(2), atol=1e-3, rtol=0)


def _off():
    from cellfm.transforms import FactorConfig

    return FactorConfig(p=0.0)


def test_output_norm_fitted_before_intensity_so_brightness_survives():
    x = field(1, 64, 64, torch.float32)
    from cellfm.transforms import FactorConfig

    mc = small(intensity=IntensityConfig(brightness=FactorConfig(p=1.0, std=0.5), contrast=_off()), seed=3)
    stds = [float(t.std()) for _ in range(5) for t in mc(x)["global_crops"]]
    assert max(stds) - min(stds) > 0.1  # not renormalised to unit std


@settings(max_examples=20, deadline=None)
@given(c=st.integers(2, 6), seed=st.integers(0, 1000))
def test_dropped_channel_is_zero_and_protected_never_dropped(c, seed):
    protected = [c - 1]
    mc = small(channels=ChannelConfig(protected=protected, drop_p=1.0))
    x = field(c, 40, 40, torch.uint16, seed)
    out = mc(x, torch.Generator().manual_seed(seed))
    for t in out["global_crops"] + out["local_crops"]:
        zero = (t == 0).flatten(1).all(1)
        assert int(zero.sum()) == 1 and not bool(zero[c - 1])


def test_constant_field_gives_zero_crops():
    x = torch.full((3, 40, 40), 7, dtype=torch.uint16)
    out = small(seed=0)(x)
    for t in out["global_crops"] + out["local_crops"]:
        assert torch.isfinite(t).all() and float(t.abs().max()) < 1e-4


def test_batched_path_matches_contract_and_is_seeded():
    x = torch.stack([field(4, 48, 48, torch.uint16, s) for s in range(3)])
    mc = small()
    out = mc.batch(x, torch.Generator().manual_seed(0))
    assert [t.shape for t in out["global_crops"]] == [(3, 4, 28, 28)] * 2
    assert [t.shape for t in out["local_crops"]] == [(3, 4, 14, 14)] * 3
    again = mc.batch(x, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(out["local_crops"], again["local_crops"]))
    # images are augmented independently
    assert not torch.equal(out["global_crops"][0][0], out["global_crops"][0][1])


def test_batched_path_same_distribution_as_single():
    # identical pipeline: with augmentations off and full-image crops, both paths give the same crop
    x = field(2, 28, 28, torch.uint16)
    kw = dict(
        global_crops_scale=(1.0, 1.0),
        local_crops_number=0,
        geometry=GeometryConfig(ratio=(1.0, 1.0), dihedral=False, p_horizontal_flip=0, p_vertical_flip=0),
        intensity=IntensityConfig(brightness=_off(), contrast=_off()),
    )
    mc = MultiCrop(28, 14, **kw)
    single = mc(x)["global_crops"][0]
    batched = mc.batch(x[None].repeat(2, 1, 1, 1))["global_crops"][0]
    torch.testing.assert_close(batched[0], single)
    torch.testing.assert_close(batched[1], single)


def test_bag_of_channels_yields_single_channel_with_identity():
    names = ["DNA", "ER", "RNA"]
    mc = small(channels=ChannelConfig(bag_of_channels=True, names=names, num_channels=3))
    x = torch.stack([torch.full((40, 40), float(i)) for i in range(3)]) + torch.rand(3, 40, 40) * 0.1
    seen = set()
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        out = mc(x, g)
        assert all(t.shape == (1, 28, 28) for t in out["global_crops"])
        assert out["channel_name"] == names[out["channel_index"]]
        seen.add(out["channel_index"])
    assert seen == {0, 1, 2}
    b = mc.batch(x[None].repeat(4, 1, 1, 1), g)
    assert b["channel_index"].shape == (4,) and b["global_crops"][0].shape == (4, 1, 28, 28)


def test_bag_of_channels_uses_dataset_stats_of_the_sampled_channel():
    mean, std = [0.0, 100.0], [1.0, 10.0]
    mc = small(
        channels=ChannelConfig(bag_of_channels=True),
        input_norm=NormalizeConfig(mode="dataset", mean=mean, std=std),
        output_norm=NormalizeConfig(mode="identity"),
        intensity=IntensityConfig(brightness=_off(), contrast=_off()),
    )
    x = torch.stack([torch.zeros(40, 40), torch.full((40, 40), 100.0)])
    for s in range(6):
        out = mc(x, torch.Generator().manual_seed(s))
        assert float(out["global_crops"][0].abs().max()) < 1e-5  # each channel maps to its own zero


def test_elastic_in_pipeline_stays_finite():
    mc = small(geometry=GeometryConfig(elastic_p=1.0, elastic_alpha=3.0), seed=0)
    out = mc(field(2, 40, 40, torch.uint8))
    assert all(torch.isfinite(t).all() for t in out["global_crops"])


# --- bad input --------------------------------------------------------------------------------


def test_nan_error_and_replace():
    x = torch.rand(2, 40, 40)
    x[1, 3, 4] = float("nan")
    x[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"shape \(1, 2, 40, 40\) has 2 NaN/Inf pixels"):
        small()(x)
    out = small(nan_policy="replace", nan_fill=0.0, seed=0)(x)
    assert all(torch.isfinite(t).all() for t in out["global_crops"] + out["local_crops"])


def test_wrong_rank_and_channel_count_name_the_shape():
    with pytest.raises(ValueError, match=r"\(C, H, W\), got shape \(40, 40\).*x\[None\]"):
        small()(torch.rand(40, 40))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\), got shape \(2, 40, 40\)"):
        small().batch(torch.rand(2, 40, 40))
    with pytest.raises(
        ValueError, match=r"image has 3 channels \(shape \(1, 3, 40, 40\)\) but the config expects 5"
    ):
        small(channels=ChannelConfig(num_channels=5))(torch.rand(3, 40, 40))
    with pytest.raises(
        ValueError, match=r"channels.protected \[4\] out of range for an image with 2 channels"
    ):
        small(channels=ChannelConfig(protected=[4]))(torch.rand(2, 40, 40))
    with pytest.raises(TypeError, match="real numeric image"):
        small()(torch.zeros(1, 40, 40, dtype=torch.bool))


def test_small_image_error_or_documented_upsampling():
    with pytest.raises(ValueError, match=r"shape \(1, 2, 20, 50\) is smaller than the 28 px crop"):
        small()(torch.rand(2, 20, 50))
    out = small(geometry=GeometryConfig(small_image="upsample"), seed=0)(torch.rand(2, 20, 50))
    assert out["global_crops"][0].shape == (2, 28, 28)


def test_bad_config_values():
    with pytest.raises(ValueError, match="global_crops_scale must satisfy"):
        MultiCrop(global_crops_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="nan_policy"):
        MultiCrop(nan_policy="ignore")
    with pytest.raises(ValueError, match="names has 2 entries but num_channels is 3"):
        MultiCrop(channels=ChannelConfig(num_channels=3, names=["a", "b"]))
    with pytest.raises(ValueError, match=r"intensity.blur p\[2\] must be a probability"):
        MultiCrop(intensity=IntensityConfig(blur=BlurConfig(p_local=2.0)))


def test_default_documented_values():
    mc = MultiCrop()
    assert (mc.global_crops_size, mc.local_crops_size, mc.local_crops_number) == (224, 96, 8)
    assert mc.global_crops_scale == (0.32, 1.0) and mc.local_crops_scale == (0.05, 0.32)
    assert mc.input_norm.mode == "percentile" and mc.output_norm.mode == "zscore"
    x = np.random.default_rng(0).integers(0, 65535, (5, 256, 256)).astype(np.uint16)
    out = mc(x, torch.Generator().manual_seed(0))
    assert out["global_crops"][0].shape == (5, 224, 224) and out["local_crops"][7].shape == (5, 96, 96)


def test_global_same_box_pairs_differ_only_by_a_symmetry():
    """global_same_box_p=1: the second global crop is the first's box under one of the 8 symmetries
    (no intensity augmentation here); 0: boxes are drawn independently (fails if the box is reused)."""
    quiet = IntensityConfig(
        brightness=FactorConfig(p=0.0),
        contrast=FactorConfig(p=0.0),
        blur=BlurConfig(p_global=(0.0, 0.0), p_local=0.0),
    )
    x = field(1, 96, 96, torch.float32, seed=3)

    def best(p: float, seed: int) -> float:
        a, b = small(geometry=GeometryConfig(global_same_box_p=p), intensity=quiet, seed=seed)(x)[
            "global_crops"
        ]
        views = [torch.rot90(v, k, dims=(-2, -1)) for v in (a, a.flip(-1)) for k in range(4)]
        return min(float((v - b).abs().max()) for v in views)

    assert all(best(1.0, s) < 1e-5 for s in range(5))
    assert all(best(0.0, s) > 1e-2 for s in range(5))
    with pytest.raises(ValueError, match="global_same_box_p"):
        small(geometry=GeometryConfig(global_same_box_p=1.5))
