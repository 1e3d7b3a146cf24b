"""One writer per output: an exclusive lock file `<output>.lock` holding the writer's pid and host.

The lock is an `flock` on that file, so the kernel releases it when its holder exits or is killed;
a lock file left by a dead process is taken over (stale lock) with a warning naming the old holder.
A second writer gets `OutputLocked` naming the holder. Used by convert, embed, pretrain and curate.
Remote outputs (``s3://...``) are not locked: object stores have no such primitive.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)
LOCK_SUFFIX = ".lock"


class OutputLocked(RuntimeError):
    """Another live process is writing the same output."""


def lock_path(output: str | os.PathLike) -> Path:
    """The lock file of an output: `<output>.lock` beside it."""
    out = Path(str(output).removeprefix("file://").rstrip("/"))
    return out.with_name(out.name + LOCK_SUFFIX)


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "an unknown process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')} ({holder.get('command', '?')}, since {since})"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """An acquired lock; `release()` (or leaving the `exclusive` block) removes the lock file."""

    def __init__(self, output: str | os.PathLike, command: str = ""):
        self.output, self.path = str(output), lock_path(output)
        self.command = command or " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv[:3]))
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        for _ in range(20):
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:  # read-only or missing folder: fail before any work, naming it
                from .atomic import WriteFailed

                raise WriteFailed(
                    err.errno, f"{self.output}: cannot create its lock file {self.path} ({err.strerror})"
                ) from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputLocked(
                    f"{self.output}: another cellfm process is writing this output: {_describe(_holder(self.path))}; "
                    f"wait for it to finish or stop it (lock file {self.path})"
                ) from None
            # The holder may have removed the file between our open and flock: lock the live file only.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            old = _holder(self.path)
            if old:
                self._warn_stale(old)
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": time.time(),
                "command": self.command,
            }
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info).encode())
            self._fd = fd
            return self
        raise OutputLocked(f"{self.output}: could not take the lock file {self.path} (it keeps changing)")

    def _warn_stale(self, old: dict) -> None:
        here = old.get("host") == socket.gethostname()
        if here and isinstance(old.get("pid"), int) and _pid_alive(old["pid"]) and old["pid"] != os.getpid():
            log.warning(
                "%s: lock file names live pid %s but is not held; taking it over", self.path, old["pid"]
            )
        else:
            log.warning(
                "%s: stale lock of %s (the process is gone); taking it over", self.path, _describe(old)
            )

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # unlink before unlocking: a waiter then locks a fresh file
        os.close(self._fd)
        self._fd = None


@contextlib.contextmanager
def exclusive(
    output: str | os.PathLike, command: str = "", enabled: bool = True
) -> Iterator[OutputLock | None]:
    """Hold the output's lock for the block; `OutputLocked` names the holder when another process has it."""
    if not enabled or ("://" in str(output) and not str(output).startswith("file://")):
        yield None
        return
    lock = OutputLock(output, command).acquire()
    try:
        yield lock
    finally:
        lock.release()
