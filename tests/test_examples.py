"""Every example runs end to end on tiny settings."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).parents[1] / "examples"


@pytest.fixture(autouse=True)
def _examples_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))


def _run(name: str, *argv: str) -> dict:
    module = importlib.import_module(name)
    return module.main(list(argv))


def test_pretrain_plate_example(tmp_path):
    out = _run("pretrain_plate", "--output", str(tmp_path), "--tiny", "--minutes", "1")
    assert out["steps"] == 3 and out["loss"] > 0
    assert (tmp_path / "run" / "backbone.pth").is_file()


def test_continue_from_dinov2_example(tmp_path, dinov2_vits):
    official = dinov2_vits.vit_small(patch_size=14, img_size=56, init_values=1.0, block_chunks=0)
    ckpt = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(official.state_dict(), ckpt)
    out = _run("continue_from_dinov2", "--checkpoint", str(ckpt), "--output", str(tmp_path / "run"), "--tiny",
               "--steps", "2")  # fmt: skip
    assert out["in_chans"] == 5 and out["channels"] == ["DNA", "ER", "RNA", "AGP", "Mito"]


def test_distill_example(tmp_path):
    out = _run("distill", "--output", str(tmp_path), "--tiny", "--steps", "2")
    assert out["student_depth"] == 2


def test_embed_and_analyze_example(tmp_path):
    out = _run("embed_and_analyze", "--output", str(tmp_path), "--tiny")
    assert out["cells"] > 50 and out["clusters"] >= 2
    assert all(Path(p).is_file() for p in out["plots"])


def test_napari_segmentation_example(qtbot):
    out = _run("napari_segmentation", "--tiny", "--viewer")
    assert out["f1"] > 0.8


def teardown_module():
    for name in (
        "pretrain_plate",
        "continue_from_dinov2",
        "distill",
        "embed_and_analyze",
        "napari_segmentation",
        "_tiny",
    ):
        sys.modules.pop(name, None)
