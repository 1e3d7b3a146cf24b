"""Wheel and editable installs both import cellfm.transforms, cellfm.plugins.napari, cellfm.configs.

Each test makes a throw-away venv whose only cellfm is the one under test; the dependencies come
from the running interpreter's site-packages through a .pth line (which does not activate the
running environment's own editable finder).
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK = """
import json, cellfm, cellfm.transforms, cellfm.plugins.napari, cellfm.configs
from cellfm.config import list_configs, read_yaml_config
from importlib.resources import files
print(json.dumps({
    "cellfm": cellfm.__file__,
    "transforms": cellfm.transforms.__file__,
    "napari": cellfm.plugins.napari.__file__,
    "manifest": files("cellfm.plugins.napari").joinpath("napari.yaml").is_file(),
    "configs": list_configs(),
    "default_model_section": "model" in read_yaml_config("default"),
}))
"""

pytestmark = pytest.mark.slow


def _venv(tmp_path: Path) -> Path:
    env = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    site = next((env / "lib").glob("python*/site-packages"))
    (site / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env


def _pip(env: Path, *args: str) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(env / "bin" / "python"),
        "install",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        *args,
    ]
    subprocess.run(cmd, check=True, cwd=ROOT)


def _check(env: Path, cwd: Path) -> dict:
    import json

    out = subprocess.run([str(env / "bin" / "python"), "-c", CHECK], capture_output=True, text=True, cwd=cwd)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_wheel_install_imports_all_top_level_folders(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(ROOT),
        ],
        check=True,
    )
    wheel = next(dist.glob("cellfm-*.whl"))
    env = _venv(tmp_path)
    _pip(env, str(wheel))
    info = _check(env, tmp_path)
    for key in ("cellfm", "transforms", "napari"):
        assert str(env) in info[key], f"{key} imported from {info[key]}, not the wheel install"
    assert info["transforms"].endswith("cellfm/transforms/__init__.py")
    assert info["manifest"] and info["default_model_section"]
    assert "default" in info["configs"]


def test_editable_install_imports_all_top_level_folders(tmp_path):
    env = _venv(tmp_path)
    _pip(env, "-e", str(ROOT))
    info = _check(env, tmp_path)
    assert info["cellfm"] == str(ROOT / "cellfm" / "__init__.py")
    assert info["transforms"] == str(ROOT / "transforms" / "__init__.py")
    assert info["napari"] == str(ROOT / "plugins" / "napari" / "__init__.py")
    assert info["manifest"] and "default" in info["configs"]
