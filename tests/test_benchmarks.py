"""CI smoke run of every benchmark at its tiny size: it runs, prints its table and saves its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
# benchmark script -> the JSON file its --tiny run writes under benchmarks/results/
BENCHMARKS = {
    "backbone": "backbone_tiny.json",
    "checkpoint": "checkpoint_tiny.json",
    "comm": "comm_tiny.json",
    "ssl_step": "ssl_step_tiny.json",
    "transforms": "transforms_tiny.json",
    "loader": "loader_tiny.json",
    "data_path": "data_path_tiny.json",
    "embed": "embed_tiny.json",
    "segment": "segment_tiny.json",
    "segment_strokes": "segment_strokes_tiny.json",
    "curate": "curate_tiny.json",
    "copy_detection": "copy_detection_tiny.json",
}


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_smoke_run(name):
    result = ROOT / "benchmarks" / "results" / BENCHMARKS[name]
    started = time.time()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--tiny"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result.is_file() and result.stat().st_mtime >= started - 1, f"{result} was not written"
    data = json.loads(result.read_text())
    assert data, f"{result} is empty"
    assert f"saved {result}" in proc.stdout, proc.stdout[-2000:]  # the table came before it
