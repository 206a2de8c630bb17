"""Writing secrets safely: private keys are created with mode 0600, never overwritten, never printed."""

from __future__ import annotations

import os
from pathlib import Path

from common.errors import CertificateError


def write_private(path: Path, data: bytes) -> Path:
    """Create ``path`` with mode 0600 (refusing to overwrite) and write ``data`` to it."""
    return _create(path, data, 0o600, "refusing to overwrite a key")


def write_public(path: Path, data: bytes) -> Path:
    """Create ``path`` (mode 0644, refusing to overwrite) with public material (a certificate or public key)."""
    return _create(path, data, 0o644, "refusing to overwrite it")


def _create(path: Path, data: bytes, mode: int, refusal: str) -> Path:
    # O_EXCL with the mode at creation: the file never exists with looser permissions, not even for an instant.
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise CertificateError(f"{path}: file exists; {refusal}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return path


def read_file(path: Path, what: str) -> bytes:
    """Bytes of ``path``, or a CertificateError naming the file and what it should be."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"{path}: cannot read the {what}: {exc.strerror}") from None


def check_private_permissions(path: Path) -> None:
    """Refuse a private key that other users can read (as ssh does)."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise CertificateError(f"{path}: private key is readable by others (mode {oct(mode)}); chmod 600 it")
