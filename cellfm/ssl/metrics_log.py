"""`metrics.jsonl`: one JSON object per step, each appended with a single write (a line is whole or,
after a crash or a full disk, a torn last line that the reader drops with a warning)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text, write_failed

log = logging.getLogger("cellfm.pretrain")


def append_row(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append `row` as one line in one `write`; a failed write is undone (no torn line is left)."""
    data = (json.dumps(row) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            n = os.write(fd, data)
            if n != len(data):
                raise OSError(28, "short write (no space left on device?)")
        except OSError as err:
            os.ftruncate(fd, start)  # drop the partial line
            raise write_failed(path, err, needed=len(data)) from err
    finally:
        os.close(fd)


def read_rows(path: str | os.PathLike, *, warn: bool = True) -> list[dict[str, Any]]:
    """All rows; a torn (unparsable) last line is dropped with a warning, a bad line elsewhere is an error."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(errors="replace").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    rows = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("not an object with an integer 'step'")
        except ValueError as err:
            if i == len(lines):
                if warn:
                    log.warning("%s: dropping a torn last line %d (%r...): %s", path, i, line[:40], err)
                break
            raise ValueError(
                f"{path}: line {i} is not a metrics row ({err}); fix or remove the line"
            ) from err
        rows.append(row)
    return rows


def truncate_after(path: str | os.PathLike, step: int) -> int:
    """Keep rows of steps < `step` (and no torn line), rewritten atomically; returns rows dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    total = sum(1 for line in path.read_text(errors="replace").split("\n") if line.strip())
    keep = [r for r in read_rows(path) if r["step"] < step]
    dropped = total - len(keep)
    if dropped:
        log.info("%s: dropping %d rows written after the checkpoint of step %d", path, dropped, step)
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
    return dropped
