"""Crash-safe file writes, and a probe that a directory can take them.

Write a temporary file beside the target, fsync it, rename it over the target, fsync the directory. A reader (or a
process restarted after a crash) sees either the old content or the new, never a
mix, and a completed write survives power loss.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def fsync_directory(directory: Path) -> None:
    """Persist a directory entry change (a rename or a new file) on POSIX file systems."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, mode)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def atomic_write_json(path: Path, obj: Any, *, mode: int = 0o644) -> None:
    """Write ``obj`` as indented JSON (non-finite floats as null), atomically and durably."""
    atomic_write_bytes(path, (json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n").encode(), mode=mode)


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float (nested in dicts, lists, tuples) replaced by None.

    JSON has no such numbers; fedtune writes strict JSON (``allow_nan=False``) that any reader can parse.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def probe_writable_directory(directory: Path) -> list[Path]:
    """Create ``directory`` (and missing parents) if needed and prove a file can be created and removed in it.

    Returns the directories this call created, outermost first, so that a caller who gives up can remove them
    again (:func:`remove_created_directories`). Raises the ``OSError`` of the step that failed (e.g.
    ``NotADirectoryError`` for a path under a regular file, ``PermissionError``, ``OSError(EROFS)``); a path that
    exists but is not a directory is ``NotADirectoryError`` too. Only trying tells: ``os.access`` says yes to root
    everywhere, and nothing short of creating a file finds a read-only mount or ``/proc``.
    """
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    created: list[Path] = []
    try:
        for path in reversed(missing):
            path.mkdir()
            created.append(path)
        if not directory.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(directory))
        fd, probe = tempfile.mkstemp(prefix=".fedtune-probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except BaseException:
        remove_created_directories(created)
        raise
    return created


def remove_created_directories(created: list[Path]) -> None:
    """Remove directories listed by :func:`probe_writable_directory`, innermost first, if they are still empty."""
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:
            return  # not empty (someone wrote there) or already gone: leave it and everything above it
