"""Collapse warnings and the metrics file."""

from __future__ import annotations

import json
import logging

from cellfm.ssl.monitor import Monitor, plot_loss_curve


def _row(step, entropy=0.5, std=0.05):
    return {"step": step, "loss": 1.0, "dino_loss": 0.5, "ibot_loss": 0.4, "koleo_loss": 0.1,
            "teacher_entropy": entropy, "feature_std": std}  # fmt: skip


def test_collapse_warnings_fire_once(tmp_path, caplog):
    mon = Monitor(tmp_path, enabled=True, collapse_entropy=0.05, tensorboard=False)
    with caplog.at_level(logging.WARNING, logger="cellfm.pretrain"):
        mon.log(_row(0, entropy=0.01))
        mon.log(_row(1, entropy=0.01))
        mon.log(_row(150, entropy=0.995))
        mon.log(_row(151, std=1e-5))
    messages = [r.getMessage() for r in caplog.records]
    assert sum("collapse" in m and "few prototypes" in m for m in messages) == 1
    assert sum("nearly uniform" in m for m in messages) == 1
    assert sum("features are collapsing" in m for m in messages) == 1


def test_metrics_lines_truncate_on_resume_and_plot(tmp_path):
    mon = Monitor(tmp_path, enabled=True, collapse_entropy=0.05, tensorboard=False)
    for s in range(5):
        mon.log(_row(s))
    mon.truncate_after(3)
    steps = [json.loads(line)["step"] for line in mon.path.read_text().splitlines()]
    assert steps == [0, 1, 2]
    assert plot_loss_curve(mon.path, tmp_path / "loss.png").stat().st_size > 1000
