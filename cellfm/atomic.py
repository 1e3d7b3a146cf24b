"""Atomic file writes: a temporary file beside the target, renamed over it once complete, so a crash
never leaves a half-written file under the real name (leftovers are hidden `.<name>.*.tmp` files)."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


class WriteFailed(OSError):
    """A write that did not complete (full disk, quota, I/O error); the message names the file."""


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the file system holding `path` (or its nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def _mb(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 2**20:.1f} MiB"


def check_free_space(path: str | os.PathLike, needed: int) -> None:
    """Refuse before writing when the file system of `path` has less than `needed` bytes free."""
    free = free_bytes(Path(path).parent)
    if free is not None and needed > free:
        raise WriteFailed(
            errno.ENOSPC,
            f"{path}: needs about {_mb(needed)} but only {_mb(free)} is free on its file system; "
            "free some space and rerun (nothing was written, the last good state is kept)",
        )


def write_failed(
    path: str | os.PathLike, err: BaseException, written: int = 0, needed: int | None = None
) -> WriteFailed:
    """A `WriteFailed` naming the file, the cause and the space situation (for any write path)."""
    free = free_bytes(Path(path).parent)
    full = getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < 2**20)
    what = "no space left on device" if full else f"{type(err).__name__}: {err}"
    need = (
        f"; it needs about {_mb(needed)}"
        if needed
        else (f"; {_mb(written)} were written before the failure" if written else "")
    )
    return WriteFailed(
        errno.ENOSPC if full else (getattr(err, "errno", None) or errno.EIO),
        f"{path}: writing failed ({what}){need}; {_mb(free)} free on its file system. "
        "The previous version of the file (if any) is untouched",
    )


def remove_stale_temps(folder: str | os.PathLike, pattern: str = ".*.tmp") -> int:
    """Delete temporary files left by killed writers in `folder` (call while holding its lock)."""
    n = 0
    for tmp in Path(folder).glob(pattern):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            n += 1
    if n:
        log.info("%s: removed %d temporary files left by an interrupted write", folder, n)
    return n


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[str], None],
    *,
    fsync: bool = False,
    size_hint: int | None = None,
) -> Path:
    """Call `write(tmp_path)`, optionally fsync it, then rename it to `path`; returns `path`.

    A failed write (full disk, I/O error, or a library's wrapped error for either) raises `WriteFailed`
    naming `path`; `size_hint` (bytes) is checked against the free space before writing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if size_hint:
        check_free_space(path, size_hint)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        try:
            write(tmp)
            if fsync:
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
        except (OSError, RuntimeError) as err:  # torch / h5py wrap ENOSPC in RuntimeError / OSError
            written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
            if os.path.exists(tmp):
                os.unlink(tmp)  # free the space before measuring what is left
            raise write_failed(path, err, written, size_hint) from err
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))
