"""What this installation can do: versions, threads, devices, optional backends, configs, models.

`cellfm info` prints it; users paste it into bug reports.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PACKAGES = ("cellfm", "torch", "numpy", "safetensors", "tifffile", "zarr", "dask", "anndata", "scanpy")
OPTIONAL = ("napari", "PyQt6", "magicgui", "npe2", "xformers", "dinov2")
OPTIONAL += ("bioio-nd2", "bioio-czi", "bioio-lif")  # readers of `cellfm convert` (the bioio extra)


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _importable(name: str) -> tuple[bool, str]:
    try:
        importlib.import_module(name)
        return True, "ok"
    except Exception as err:  # noqa: BLE001 - report any failure, never crash `info`
        return False, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


VIEWER_CHECK = "import napari; viewer = napari.Viewer(show=False); viewer.close(); print('viewer ok')"


def viewer_check(timeout: float = 120.0) -> tuple[bool, str]:
    """Start a napari viewer in a subprocess (Qt aborts the process when its platform plugin cannot
    load, e.g. missing xcb libraries or no display); (usable, reason)."""
    import subprocess

    try:
        out = subprocess.run([sys.executable, "-c", VIEWER_CHECK], capture_output=True, text=True,
                             timeout=timeout, env=os.environ.copy())  # fmt: skip
    except subprocess.TimeoutExpired:
        return False, f"a viewer did not start within {timeout:.0f} s"
    if out.returncode == 0 and "viewer ok" in out.stdout:
        return True, f"viewer starts (QT_QPA_PLATFORM={os.environ.get('QT_QPA_PLATFORM', 'default')})"
    lines = [ln for ln in out.stderr.splitlines() if ln.strip() and not ln.startswith(("Traceback", "  "))]
    keys = ("could not load the qt platform", "could not connect", "cannot open shared object", "xcb")
    hint = next((ln for k in keys for ln in lines if k in ln.lower()), lines[-1] if lines else "")
    return False, (f"napari imports but a viewer cannot start (exit {out.returncode}): {hint.strip()[:200]}; "
                   "on Linux install the Qt xcb libraries (libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0) and "
                   "run under a display (xvfb-run), or set QT_QPA_PLATFORM=offscreen")  # fmt: skip


def collect(check_viewer: bool = True) -> dict[str, Any]:
    import torch

    from .config import list_configs
    from .models.factory import HUB_MODELS

    cuda = torch.cuda.is_available()
    devices = ["cpu"] + [
        f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())
    ]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        devices.append("mps")
    xformers_ok, xformers_msg = (
        _importable("xformers.ops") if _version("xformers") else (False, "not installed")
    )
    napari_ok, napari_msg = _importable("napari") if _version("napari") else (False, "not installed")
    if napari_ok and check_viewer:
        napari_ok, napari_msg = viewer_check()
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        from .default_model import default_model_path

        default_model = str(default_model_path())
    except FileNotFoundError as err:
        default_model = f"not available ({err})"
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "optional": {name: _version(name) for name in OPTIONAL},
        "threads": {"torch": torch.get_num_threads(), "cpu_count": os.cpu_count()},
        "devices": devices,
        "attention": {
            "sdpa": True,
            "xformers": "usable"
            if xformers_ok and cuda
            else f"not usable ({xformers_msg if not xformers_ok else 'no CUDA'})",
        },
        "napari": f"usable ({napari_msg})"
        if napari_ok and napari_msg != "ok"
        else "usable"
        if napari_ok
        else f"not usable ({napari_msg})",
        "configs": list_configs(),
        "models": {
            "default": default_model,
            "hub_cache": str(hub),
            "hub_checkpoints": sorted(p.name for p in hub.glob("dinov2_*.pth")) if hub.is_dir() else [],
            "known_names": sorted(HUB_MODELS),
        },
    }


def format_info(info: dict[str, Any]) -> str:
    lines = [f"cellfm {info['packages']['cellfm']}  (python {info['python']}, {info['platform']})"]
    lines.append(
        "packages:  "
        + ", ".join(f"{k} {v or 'missing'}" for k, v in info["packages"].items() if k != "cellfm")
    )
    lines.append("optional:  " + ", ".join(f"{k} {v or '-'}" for k, v in info["optional"].items()))
    lines.append(f"threads:   torch {info['threads']['torch']} of {info['threads']['cpu_count']} CPUs")
    lines.append("devices:   " + ", ".join(info["devices"]))
    lines.append(f"attention: sdpa yes; xformers {info['attention']['xformers']}")
    lines.append(f"napari:    {info['napari']}")
    lines.append("configs:   " + ", ".join(info["configs"]))
    models = info["models"]
    lines.append(f"default model: {models['default']}")
    found = ", ".join(models["hub_checkpoints"]) or "none"
    lines.append(f"DINOv2 checkpoints in {models['hub_cache']}: {found}")
    lines.append("known DINOv2 names: " + ", ".join(models["known_names"]))
    return "\n".join(lines)
