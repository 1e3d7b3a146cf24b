"""Channel augmentations: drop (never all, never protected), protected rescale, Bag-of-Channels."""

import pytest
import torch
from cellfm.transforms import DropChannel, RescaleChannel, sample_channel, split_channels
from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=20, deadline=None)
@given(
    c=st.integers(1, 7),
    protected=st.lists(st.integers(0, 6), max_size=3, unique=True),
    p=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_drop_channel_invariants(c, protected, p, seed):
    protected = [i for i in protected if i < c]
    x = torch.rand(64, c, 4, 4) + 0.5  # strictly positive, so zero means dropped
    out = DropChannel(p, protected)(x, torch.Generator().manual_seed(seed))
    dropped = (out == 0).flatten(2).all(-1)  # (N, C)
    assert bool((dropped.sum(1) <= 1).all())  # at most one channel per crop
    assert not bool(dropped.all(1).any())  # never all channels
    if protected:
        assert not bool(dropped[:, protected].any())  # never a protected channel
    kept = ~dropped
    assert torch.equal(out[kept], x[kept])  # other channels untouched
    if c == 1 or len(protected) == c or p == 0.0:
        assert torch.equal(out, x)


def test_drop_channel_rate_and_uniform_choice():
    x = torch.ones(6000, 4, 2, 2)
    out = DropChannel(0.5, protected=[1])(x, torch.Generator().manual_seed(0))
    dropped = (out == 0).flatten(2).all(-1)
    assert abs(float(dropped.any(1).float().mean()) - 0.5) < 0.03
    per_channel = dropped.float().mean(0)
    assert float(per_channel[1]) == 0.0
    assert all(abs(float(per_channel[i]) - 0.5 / 3) < 0.02 for i in (0, 2, 3))


def test_rescale_channel_only_touches_protected():
    x = torch.ones(4000, 3, 2, 2)
    out = RescaleChannel(0.2, channels=[2], factor_range=(0.5, 1.5))(x, torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :2], x[:, :2])
    f = out[:, 2, 0, 0]
    changed = f != 1.0
    assert abs(float(changed.float().mean()) - 0.2) < 0.03
    assert float(f.min()) >= 0.5 and float(f.max()) <= 1.5
    assert abs(float(f[changed].mean()) - 1.0) < 0.03
    with pytest.raises(ValueError, match=r"rescaled channels \[2\] out of range.*2 channels"):
        RescaleChannel(1.0, channels=[2])(torch.ones(1, 2, 2, 2))


def test_bag_of_channels_sampling():
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.tensor([sample_channel(5, g) for _ in range(5000)]), minlength=5)
    assert all(abs(float(c) / 5000 - 0.2) < 0.025 for c in counts)
    weighted = torch.tensor([sample_channel(3, g, [0.0, 1.0, 3.0]) for _ in range(4000)])
    assert int((weighted == 0).sum()) == 0 and abs(float((weighted == 2).float().mean()) - 0.75) < 0.03
    with pytest.raises(ValueError, match="2 entries but the image has 3 channels"):
        sample_channel(3, g, [1.0, 1.0])
    x = torch.rand(3, 5, 5)
    parts = split_channels(x)
    assert [i for _, i in parts] == [0, 1, 2] and all(torch.equal(p, x[i : i + 1]) for p, i in parts)
