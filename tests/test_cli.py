"""The `cellfm` command line."""

from __future__ import annotations

import json
import subprocess
import sys

from cellfm.cli import main


def test_info_json_reports_the_installation(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["packages"]["torch"]
    assert "cpu" in info["devices"]
    assert "default" in info["configs"]
    assert "dinov2_vits14" in info["models"]["known_names"]
    assert info["threads"]["torch"] >= 1
    assert info["attention"]["sdpa"] is True


def test_info_text_runs_as_a_console_script():
    exe = [sys.executable, "-m", "cellfm.cli", "info"]
    out = subprocess.run(exe, capture_output=True, text=True, check=True).stdout
    assert out.startswith("cellfm ") and "devices:" in out and "configs:" in out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "info" in capsys.readouterr().out
