#!/usr/bin/env bash
# Set up cellfm for development from a fresh clone: .venv with every extra, the test oracle, Xvfb.
#   CELLFM_TORCH   torch requirement to install first (default torch==2.13.0, the CPU build this
#                  project is tested with; set e.g. CELLFM_TORCH=torch to take your platform's build)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${CELLFM_TORCH:-torch==2.13.0}"

if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
echo "[setup] installing $TORCH_SPEC"
.venv/bin/python -m pip install -q "$TORCH_SPEC"
echo "[setup] installing cellfm (editable) with the napari, samples, bioio and dev extras"
.venv/bin/python -m pip install -q -e ".[napari,samples,bioio,dev]"
# The official DINOv2 code is the tests' oracle; its metadata pins torch 2.0, so no dependencies.
echo "[setup] installing the test oracle dinov2==0.0.1.dev2 (--no-deps)"
.venv/bin/python -m pip install -q --no-deps dinov2==0.0.1.dev2

# napari tests need an X server (pytest-xvfb starts Xvfb when it is installed) and Qt's xcb plugin
# needs these X libraries (without them napari.Viewer() aborts; `cellfm info` checks).
X_PACKAGES="xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 libxcb-image0 libxcb-render-util0 libxcb-xkb1 libxkbcommon-x11-0 libgl1 libegl1"
missing=""
if command -v dpkg-query >/dev/null 2>&1; then
    for pkg in $X_PACKAGES; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
    done
elif ! command -v Xvfb >/dev/null 2>&1; then
    missing="$X_PACKAGES"
fi
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "[setup] installing$missing"
        { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null; } \
            || echo "[setup] warning: apt-get could not install$missing; napari tests need them" >&2
    else
        echo "[setup] warning: missing$missing; napari tests need them (apt-get install$missing)" >&2
    fi
fi
echo "[setup] done: .venv/bin/cellfm is ready"
