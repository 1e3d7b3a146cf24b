"""Shared test setup: headless Qt, few threads, seeded RNG, and the DINOv2 oracle."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def dinov2_vits():
    """The official DINOv2 ViT module (the tests' oracle), or a clear failure when it is missing."""
    try:
        from dinov2.models import vision_transformer
    except ImportError as err:  # pragma: no cover - setup.sh installs it
        pytest.fail(
            "the DINOv2 oracle is missing: run `pip install --no-deps dinov2==0.0.1.dev2` "
            f"(scripts/setup.sh does this) [{err}]"
        )
    return vision_transformer


@pytest.fixture(scope="session")
def cell_store(tmp_path_factory):
    """A cell-level store of a real nuclei image (tests/cell_store.py), embedded once for every test
    that searches it: (store .h5ad, image, mask, AnnData)."""
    from tests.cell_store import write_cell_store

    return write_cell_store(tmp_path_factory.mktemp("cells"))
