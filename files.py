"""Opening a file the user named: only regular files, and never more bytes than allowed.

A FIFO, a device (`/dev/zero`, `/dev/stdin`), a socket or a directory named where netc expects a
file would block `open()` forever (a FIFO without a writer), or feed a reader that seeks and reads
without end (zipfile on `/dev/zero`). So the file is opened without blocking (O_NONBLOCK), checked
with fstat on the open descriptor (no race between the check and the read), then read in
blocking mode. Pure Python; no netc imports, so every layer (spec, compiler, runtime) can use it.
"""

from __future__ import annotations

import fcntl
import os
import stat
from typing import BinaryIO

__all__ = ["FileRefused", "open_regular", "read_regular", "file_kind", "user_cache_dir"]


class FileRefused(Exception):
    """A user-named file that netc will not read; `message` says why (no path: callers add it)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


_KINDS = [
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
]


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str | os.PathLike[str], *, max_bytes: int | None = None) -> BinaryIO:
    """The file opened for binary reading, if it is a regular file (symlinks to one are fine) of at
    most `max_bytes` bytes. Raises FileRefused for anything else, OSError when it cannot be opened."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(f"is {file_kind(st.st_mode)}, not a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise FileRefused(f"is {st.st_size:,} bytes, more than the {max_bytes:,} allowed")
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def unreadable(name: str, e: FileRefused | OSError) -> str:
    """The message for a file that open_regular or read_regular could not read."""
    why = f"it {e.message}" if isinstance(e, FileRefused) else (e.strerror or e)
    return f"{name}: cannot be read: {why}"


def read_regular(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The whole content of a regular file of at most `max_bytes` bytes (a file that grows while
    it is read is refused too). Raises FileRefused or OSError."""
    with open_regular(path, max_bytes=max_bytes) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileRefused(f"is more than the {max_bytes:,} bytes allowed")
    return data


def user_cache_dir():
    """netc's folder in the user's cache: $XDG_CACHE_HOME/netc when that is an absolute path,
    else ~/.cache/netc (not created here)."""
    from pathlib import Path

    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(os.path.expanduser(xdg)):
        return Path(xdg).expanduser() / "netc"
    return Path.home() / ".cache" / "netc"
