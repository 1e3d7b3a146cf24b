"""Honest step throughput: how long each step waited for its batch, and a warning when data-bound."""

from __future__ import annotations

import logging
from collections import deque

log = logging.getLogger("cellfm.pretrain")


class DataWait:
    """Running data-wait fraction over the last `window` steps; warns once when more than
    `threshold` of the wall time went to waiting for data over a full window."""

    def __init__(self, num_workers: int, augment_on: str, window: int = 50, threshold: float = 0.5):
        self.num_workers, self.augment_on = num_workers, augment_on
        self.window, self.threshold = window, threshold
        self._steps: deque[tuple[float, float]] = deque(maxlen=window)
        self.warned = False

    def update(self, wait_s: float, compute_s: float, step: int) -> float:
        """Record one step; returns the data-wait fraction over the window."""
        self._steps.append((wait_s, compute_s))
        wait = sum(w for w, _ in self._steps)
        total = wait + sum(c for _, c in self._steps)
        frac = wait / total if total > 0 else 0.0
        if not self.warned and len(self._steps) == self.window and frac > self.threshold:
            self.warned = True
            hint = (
                "set augment.device: cuda to augment on the GPU"
                if self.augment_on == "cpu"
                else "the stores may be slow (remote, small chunks)"
            )
            log.warning(
                "step %d: data-bound: %.0f%% of the last %d steps' wall time was spent waiting for "
                "batches (data.num_workers = %d); raise data.num_workers or %s",
                step,
                100 * frac,
                self.window,
                self.num_workers,
                hint,
            )
        return frac
