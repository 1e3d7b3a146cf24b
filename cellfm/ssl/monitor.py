"""Per-step metrics: JSON lines, a progress bar, collapse warnings, optional TensorBoard, loss plot."""

from __future__ import annotations

import logging
import math
import resource
from pathlib import Path
from typing import Any

import torch

from .metrics_log import append_row, read_rows, truncate_after

log = logging.getLogger("cellfm.pretrain")


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Monitor:
    def __init__(self, out_dir: Path, enabled: bool, collapse_entropy: float, tensorboard: bool):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.collapse_entropy = collapse_entropy
        self._warned: set[str] = set()
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
            except Exception:  # noqa: BLE001 - TensorBoard is optional
                self.tb = None

    def truncate_after(self, step: int) -> None:
        """Drop lines of steps >= `step` (written after the checkpoint a resumed run starts from) and a
        torn last line (a crash or a full disk mid-write)."""
        if self.enabled:
            truncate_after(self.path, step)

    def log(self, row: dict[str, Any]) -> None:
        self._check_collapse(row)
        if not self.enabled:
            return
        append_row(self.path, row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, int | float):
                    self.tb.add_scalar(k, v, row["step"])

    def _check_collapse(self, row: dict[str, Any]) -> None:
        if row["teacher_entropy"] < self.collapse_entropy and "entropy" not in self._warned:
            self._warned.add("entropy")
            log.warning(
                "step %d: teacher entropy %.3f of log(K): the teacher puts nearly all mass on few prototypes "
                "(collapse); consider a higher teacher temperature or Sinkhorn-Knopp centering",
                row["step"],
                row["teacher_entropy"],
            )
        if row["teacher_entropy"] > 0.98 and row["step"] >= 100 and "uniform" not in self._warned:
            self._warned.add("uniform")
            log.warning(
                "step %d: teacher entropy %.3f of log(K): the teacher's targets are nearly uniform (the "
                "DINO loss sits at log K and teaches nothing); lower teacher.teacher_temp / "
                "warmup_teacher_temp, raise model.init_values, or lower the learning rate",
                row["step"],
                row["teacher_entropy"],
            )
        if row["feature_std"] < 1e-3 and row["step"] > 10 and "std" not in self._warned:
            self._warned.add("std")
            log.warning(
                "step %d: per-dimension std of normalised CLS features is %.2g: features are collapsing",
                row["step"],
                row["feature_std"],
            )

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_loss_curve(metrics_path: Path, out_png: Path) -> Path | None:
    """Loss terms against step, from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(metrics_path, warn=False)
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for key in ("loss", "dino_loss", "ibot_loss", "koleo_loss", "cls_invariance_loss"):
        values = [r.get(key, math.nan) for r in rows]  # a term a run did not log leaves a gap, not 0
        if any(math.isfinite(v) and v != 0 for v in values):
            ax.plot(steps, values, label=key, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(frameon=False)
    ax.set_title("cellfm pretraining")
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
