"""The README's code blocks marked `<!-- runnable -->` run as written, in order, in one folder (with the
`cellfm` console script of this environment on PATH)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"<!-- runnable -->\s*\n```(bash|python)\n(.*?)\n```", re.DOTALL)


def runnable_blocks() -> list[tuple[str, str]]:
    return BLOCK.findall(README.read_text())


def test_readme_marks_runnable_blocks():
    kinds = [kind for kind, _ in runnable_blocks()]
    assert kinds.count("bash") >= 1 and kinds.count("python") >= 1
    assert "optim.base_lr=5e-4" in "".join(code for _, code in runnable_blocks())


def test_readme_runnable_blocks_run_as_written(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1", "QT_QPA_PLATFORM": "offscreen"}  # fmt: skip
    for i, (kind, code) in enumerate(runnable_blocks()):
        cmd = [sys.executable, "-c", code] if kind == "python" else ["bash", "-euo", "pipefail", "-c", code]
        out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, (
            f"README block {i} ({kind}) failed:\n{code}\n--- stderr ---\n{out.stderr[-3000:]}"
        )
    import pandas as pd

    wells = pd.read_parquet(tmp_path / "wells.parquet")
    assert len(wells) == 4 and set(wells["Metadata_Plate"]) == {"plate1"}
    assert set(wells["Metadata_Well"]) == {"A01", "A02", "B01", "B02"}
    assert (tmp_path / "runs" / "tiny" / "backbone.safetensors").is_file()
