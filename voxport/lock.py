"""One build at a time per output directory: an advisory lock on OUT/.voxport.lock.

Two builds into one `--out` interleave their files: one build's `passed: true` manifest ended up beside
another build's unvalidated artifacts, and each sweeps the other's temporaries as "left by a killed
build". A build therefore holds `fcntl.flock` on an open descriptor of OUT/.voxport.lock for as long
as it runs. flock belongs to the open file, so the kernel releases it when the process dies however it
dies (SIGKILL included): a lock file left by a dead process is simply taken over, no pid guessing, no
stale-lock timeout. The file's content (pid, recipe, host, start time) is only there to name the
holder in the error a second build prints.

The lock file is never deleted: unlinking a flock'd file lets a third process lock a fresh inode while
a second still holds the old one. On release it is emptied instead.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from voxport.errors import BadInput

LOCK_NAME = ".voxport.lock"

try:  # POSIX only; where flock is missing the build runs unlocked (see `OutputLock.acquire`)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class OutputLock:
    """An exclusive, non-blocking lock on one output directory, held until `release` (or process exit)."""

    def __init__(self, out: Path, recipe: str) -> None:
        self.path = Path(out) / LOCK_NAME
        self.recipe = recipe
        self._fd: int | None = None
        #: why the directory could not be locked at all (file system without flock), else None
        self.unsupported: str | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> OutputLock:
        """Lock, or raise BadInput naming the live holder. A file system that cannot lock (some network
        mounts) is recorded in `unsupported` and the build goes on unlocked: refusing every build there
        would be worse than the race the lock prevents."""
        if fcntl is None:
            self.unsupported = "this platform has no flock"
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise BadInput(_busy_message(self.path.parent, holder)) from None
            self.unsupported = exc.strerror or str(exc)
            return self
        self._fd = fd
        self._write_holder()
        return self

    def _write_holder(self) -> None:
        assert self._fd is not None
        info = {
            "pid": os.getpid(),
            "recipe": self.recipe,
            "host": socket.gethostname(),
            "started": time.time(),
        }
        data = (json.dumps(info) + "\n").encode("utf-8")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        """Empty the file (no holder to name) and drop the lock; idempotent."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor of the open file releases the flock

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any]:
    """The holder's record, or {} if it is still being written (a lock taken microseconds ago)."""
    try:
        data = os.pread(fd, 4096, 0)
        info = json.loads(data.decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _busy_message(out: Path, holder: dict[str, Any]) -> str:
    who = f"pid {holder['pid']}" if "pid" in holder else "another process"
    if holder.get("host") and holder["host"] != socket.gethostname():
        who += f" on {holder['host']}"
    if holder.get("recipe"):
        who += f" (recipe {holder['recipe']})"
    if isinstance(holder.get("started"), int | float):
        who += " since " + time.strftime("%H:%M:%S", time.localtime(holder["started"]))
    return f"{out} is being built by {who}; wait for it or use another --out"
