"""kNN evaluation during training on a labelled holdout."""

from __future__ import annotations

import json

import pytest

from cellfm.ssl.config import load_ssl_config
from cellfm.ssl.train import pretrain

from .test_ssl_train import TINY, plate  # noqa: F401 - the plate fixture


def test_knn_accuracy_is_logged_every_n_steps(plate, tmp_path):  # noqa: F811
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "well,label\nA1,stardist\nA2,\nA3,timelapse\nA4,timelapse\nA5,timelapse\nA6,timelapse\n"
    )
    cfg = load_ssl_config("cpu_tiny", TINY + [
        "evaluation.knn_every=3", f"evaluation.stores=[{plate}]", f"evaluation.labels_csv={labels}",
        "evaluation.level=cell", "evaluation.labels=nuclei", "evaluation.k=5",
    ])  # fmt: skip
    pretrain(cfg, [plate], tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in rows if "knn_accuracy" in r]
    assert [r["step"] for r in scored] == [2, 5]
    assert all(0.5 < r["knn_accuracy"] <= 1.0 for r in scored)


def test_knn_needs_a_labelled_holdout():
    with pytest.raises(ValueError, match="evaluation.knn_every needs evaluation.stores"):
        load_ssl_config("cpu_tiny", ["evaluation.knn_every=10"])
