"""Crop windows of one field read through the union of their chunks: the same pixels as reading
each window, each chunk decoded once, chunk-aligned rectangles clipped at the image edge."""

import itertools

import numpy as np
import pytest

from cellfm.data import CropDataset
from cellfm.data.stores import Image
from cellfm.data.window_reads import chunks_touched, read_windows, union_rects
from cellfm.data.writer import create_plate, write_image


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    """One 3 x 150 x 170 uint16 field chunked 32 (edge chunks partial), random pixels."""
    path = str(tmp_path_factory.mktemp("w") / "p.ome.zarr")
    root = create_plate(path, "p", {"A/1": ["0"]}, "0.4")
    img = np.random.default_rng(0).integers(0, 65535, (3, 150, 170)).astype(np.uint16)
    write_image(root["A/1"].require_group("0"), img, ["a", "b", "c"], "0.4", chunk=32, min_level_size=150)
    return path, img


def test_union_rects_cover_exactly_the_needed_chunks():
    rng = np.random.default_rng(1)
    for _ in range(200):
        windows = [tuple(p) for p in rng.integers(0, 150 - 40 + 1, (rng.integers(2, 6), 2))]
        touched = chunks_touched(windows, 40, (32, 32))
        needed = set().union(*touched)
        rects = union_rects(needed, (32, 32), (150, 150))
        got = [(r, k) for y, x, h, w in rects for r in range(y // 32, (y + h - 1) // 32 + 1)
               for k in range(x // 32, (x + w - 1) // 32 + 1)]  # fmt: skip
        assert sorted(got) == sorted(needed)  # every needed chunk once, no other chunk
        for y, x, h, w in rects:
            assert y % 32 == 0 and x % 32 == 0 and y + h <= 150 and x + w <= 150


def test_read_windows_gives_the_windows_and_decodes_each_chunk_once(field, monkeypatch):
    path, img = field
    im = Image(f"{path}/A/1/0")
    windows = [(0, 0), (10, 20), (110, 130), (50, 60), (110, 0)]  # overlapping, at both edges
    reads = []
    real = Image.read

    def counting(self, y, x, h, w, level=None):
        reads.append((y, x, h, w))
        return real(self, y, x, h, w, level)

    monkeypatch.setattr(Image, "read", counting)
    crops = read_windows(im, windows, 40)
    for (y, x), crop in zip(windows, crops):
        assert crop.dtype == np.uint16 and np.array_equal(crop, img[:, y : y + 40, x : x + 40])
    decoded = sum(len(set(itertools.product(range(y // 32, (y + h - 1) // 32 + 1),
                                            range(x // 32, (x + w - 1) // 32 + 1)))) for y, x, h, w in reads)  # fmt: skip
    assert decoded == len(set().union(*chunks_touched(windows, 40, (32, 32))))
    assert decoded < sum(len(t) for t in chunks_touched(windows, 40, (32, 32)))
    assert read_windows(im, [(0, 0), (64, 64)], 32) is None  # no shared chunk: read one by one


def test_crop_dataset_groups_give_the_stored_pixels(field):
    path, img = field
    ds = CropDataset([path], crop_size=48, crops_per_epoch=40, crops_per_field=8, foreground=False)
    n = 0
    for x, meta in ds:
        y0, x0 = meta["y"], meta["x"]
        assert np.array_equal(x.numpy(), img[:, y0 : y0 + 48, x0 : x0 + 48].astype(np.float32))
        n += 1
    assert n == 40
