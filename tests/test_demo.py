"""`cellfm demo` and `cellfm eval` with the shipped default model (quick settings)."""

from __future__ import annotations

import json

import cellfm
from cellfm.demo import REPORT_FILES, run_demo
from cellfm.models import VisionTransformer


def test_default_model_is_shipped_small_and_loads():
    from cellfm.default_model import default_metrics, default_model_path

    path = default_model_path()
    assert path.stat().st_size < 15 * 2**20
    model = cellfm.load_backbone()
    assert isinstance(model, VisionTransformer) and model.arch.in_chans == 1
    assert model.cellfm_metadata["channel_names"] == ["DNA"]
    assert len(default_metrics()) > 10


def test_demo_writes_every_report_file(tmp_path):
    summary = run_demo(tmp_path / "demo", train_minutes=0.05, progress=False, quick=True)
    report = tmp_path / "demo" / "report"
    for name in REPORT_FILES:
        assert (report / name).is_file(), name
    assert summary["cells"] > 100 and summary["leiden_clusters"] >= 2
    assert summary["segmentation"]["foreground_f1"] > 0.8
    assert json.loads((report / "summary.json").read_text())["cells"] == summary["cells"]
    assert "Held-out evaluation" in (report / "report.md").read_text()
