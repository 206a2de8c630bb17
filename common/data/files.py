"""Opening and reading files a user names: regular files only, opened once, read by streaming within bounds.

A path on a command line or in a config can name anything: a directory, a FIFO whose ``open`` blocks until a writer
comes, ``/dev/zero`` that never ends, ``/proc/self/mem`` whose every read fails with EIO, or a file larger than
memory. Invariants of this module:

* A file that is not a regular file is refused before it is opened (``os.stat``), so opening has no side effect on
  a device and never blocks on a FIFO; it is opened non-blocking and checked again on the descriptor
  (``os.fstat``), so a file swapped in between is refused too.
* Nothing is read whole: lines come one at a time, each bounded (:func:`bounded_lines`), and a small file is read
  with a bound on its size (:func:`read_bounded`). Memory use is bounded by the limit, never by the file.
* Every ``OSError`` (permission denied, EIO, ...) becomes a :class:`FileAccessError` carrying a one-line reason;
  the caller turns it into its domain's error naming the file (e.g. ``DataValidationError`` for data files).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class FileAccessError(Exception):
    """A file cannot be used as input. ``reason`` is one line without the path; ``line`` is 1-based or None."""

    def __init__(self, reason: str, *, line: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


def os_reason(exc: OSError) -> str:
    """The operating system's words for ``exc`` (e.g. 'Permission denied'), without the path."""
    return exc.strerror or type(exc).__name__


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def check_regular_file(path: Path) -> os.stat_result:
    """``os.stat(path)`` (symbolic links followed), if ``path`` is a regular file; FileAccessError otherwise.

    Only looks: nothing is opened, so a FIFO or a device is refused without any effect on it.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileAccessError("no such file") from None
    except OSError as exc:
        raise FileAccessError(f"cannot access the file: {os_reason(exc)}") from None
    if not stat.S_ISREG(info.st_mode):
        raise FileAccessError(f"this is {_kind(info.st_mode)}, not a regular file")
    return info


@contextmanager
def open_regular_file(path: Path) -> Iterator[BinaryIO]:
    """A buffered binary reader on ``path``, which must be a regular file (see the module's invariants)."""
    before = check_regular_file(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise FileAccessError(f"cannot open the file: {os_reason(exc)}") from None
    try:
        after = os.fstat(fd)
        if not stat.S_ISREG(after.st_mode):
            raise FileAccessError(f"this is {_kind(after.st_mode)}, not a regular file")
        if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            raise FileAccessError("the file was replaced while it was being opened; try again")
        os.set_blocking(fd, True)  # reads of a regular file never block; restore the ordinary mode
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle


def bounded_lines(handle: BinaryIO, *, max_line_bytes: int) -> Iterator[bytes]:
    """The physical lines of ``handle`` (each ending in a newline byte except perhaps the last), one at a time.

    A line whose content (without the newline) is longer than ``max_line_bytes`` raises FileAccessError naming
    it, after at most ``max_line_bytes + 1`` of its bytes were read: a file without newlines cannot fill memory.
    """
    number = 0
    while True:
        try:
            line = handle.readline(max_line_bytes + 1)
        except OSError as exc:
            raise FileAccessError(f"cannot read the file: {os_reason(exc)}") from None
        if not line:
            return
        number += 1
        if len(line) > max_line_bytes and not line.endswith(b"\n"):
            raise FileAccessError(
                f"line is over the limit of {max_line_bytes:,} bytes (a corrupt or non-text file?)", line=number
            )
        yield line


def read_bounded(path: Path, *, max_bytes: int) -> bytes:
    """The whole content of the regular file ``path``, refused (unread beyond the bound) if over ``max_bytes``."""
    with open_regular_file(path) as handle:
        try:
            data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise FileAccessError(f"cannot read the file: {os_reason(exc)}") from None
    if len(data) > max_bytes:
        raise FileAccessError(f"the file is over the limit of {max_bytes:,} bytes")
    return data
