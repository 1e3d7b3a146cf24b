"""On-disk row store of a resumable embedding job: one part file per finished field.

A part file is written to a temporary name and renamed, so its presence is the field's completion
record: a job killed at any point resumes with every finished field kept once and the others redone.
`job.json` holds the job's signature; resuming with other settings is an error, never a mix.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from cellfm.atomic import atomic_write, atomic_write_text

from .fields import FieldResult

SIGNATURE_FILE = "job.json"
log = logging.getLogger(__name__)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class RowStore:
    """Part files `rows/<field index>.npz` (X and per-row columns) under a job folder."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.rows = self.path / "rows"

    def open(self, signature: dict[str, Any], overwrite: bool = False) -> int:
        """Create the folder, or check that an existing one belongs to this job; returns fields done."""
        sig = _jsonable(signature)
        sig_file = self.path / SIGNATURE_FILE
        if overwrite and self.path.exists():
            shutil.rmtree(self.path)
        if sig_file.is_file():
            old = json.loads(sig_file.read_text())
            if old != sig:
                keys = sorted(k for k in set(old) | set(sig) if old.get(k) != sig.get(k))
                raise ValueError(
                    f"{self.path}: holds a partial job with other settings (differs in {keys}); "
                    "rerun with the same settings to resume, or pass overwrite (--overwrite) to start again"
                )
        elif self.path.exists() and any(self.path.iterdir()):
            raise ValueError(f"{self.path}: exists and is not a cellfm job folder (no {SIGNATURE_FILE})")
        self.rows.mkdir(parents=True, exist_ok=True)
        if not sig_file.is_file():
            atomic_write_text(sig_file, json.dumps(sig, indent=1))
        for stale in self.rows.glob(".*.tmp"):  # left by a killed writer
            stale.unlink(missing_ok=True)
        for part in self.rows.glob("[0-9]*.npz"):  # a damaged part is redone, not a blocker
            try:
                with np.load(part) as z:
                    z["X"].shape  # noqa: B018 - reading the member checks the archive
            except Exception as err:  # noqa: BLE001 - any unreadable part
                log.warning("%s: damaged part file (%s); the field will be embedded again", part, err)
                part.unlink()
        return len(self.done())

    def part(self, index: int) -> Path:
        return self.rows / f"{index:06d}.npz"

    def done(self) -> set[int]:
        """Indices of fields whose rows are complete on disk."""
        return {int(p.stem) for p in self.rows.glob("[0-9]*.npz")}

    def write(self, result: FieldResult) -> None:
        """Store a field's rows atomically (temp file + rename)."""
        arrays = {"X": result.X, "shape": np.asarray(result.shape), "pid": np.asarray(os.getpid())}
        arrays.update({f"col_{k}": np.asarray(v) for k, v in result.columns.items()})
        if result.skipped:
            arrays["skipped"] = np.asarray(json.dumps(result.skipped))
        atomic_write(self.part(result.index), lambda tmp: _savez(tmp, arrays), fsync=True)

    def columns(self, index: int) -> dict[str, np.ndarray]:
        """Per-row columns of a field (not X)."""
        with np.load(self.part(index)) as z:
            return {k[4:]: z[k] for k in z.files if k.startswith("col_")}

    def X(self, index: int) -> np.ndarray:
        with np.load(self.part(index)) as z:
            return z["X"]

    def part_info(self, index: int) -> tuple[int, int]:
        """(rows, id of the process that wrote them; -1 when not recorded) of a field, in one read."""
        with np.load(self.part(index)) as z:
            return int(z["X"].shape[0]), int(z["pid"]) if "pid" in z.files else -1

    def skipped(self, index: int) -> dict | None:
        """Why a field gave no rows (damaged data), or None."""
        with np.load(self.part(index)) as z:
            return json.loads(str(z["skipped"])) if "skipped" in z.files else None

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _savez(path: str, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a temporary name
        np.savez(f, **arrays)
