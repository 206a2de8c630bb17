"""Ed25519 signatures over ledger record hashes (RFC 8032, via the cryptography package).

A site that signs its ledger makes it tamper-evident against anyone without the site's private key: the hash chain
alone detects accidental or naive edits, but whoever can write the file could recompute every hash.
Private keys are PKCS#8 PEM files written with mode 0600; public keys travel as base64 of the raw 32 bytes.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.errors import CertificateError

#: A PEM Ed25519 key is about 120 bytes; anything far larger is not one.
MAX_KEY_BYTES = 64 * 1024


def generate_signing_key(path: Path) -> Ed25519PublicKey:
    """Create a new Ed25519 key at ``path`` (0600, refusing to overwrite) and a ``.pub`` file beside it."""
    if path.exists():
        raise CertificateError(f"{path}: file exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public = key.public_key()
    path.with_name(path.name + ".pub").write_text(public_key_text(public) + "\n")
    return public


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Read an Ed25519 private key (PKCS#8 PEM); raises CertificateError naming the file on any problem."""
    from common.data.files import FileAccessError, read_bounded

    try:
        data = read_bounded(path, max_bytes=MAX_KEY_BYTES)  # a regular file, never a device read forever
    except FileAccessError as exc:
        raise CertificateError(f"{path}: cannot read the signing key: {exc.reason}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CertificateError(f"{path}: the ledger signing key must be Ed25519; got {type(key).__name__}")
    return key


def public_key_text(key: Ed25519PublicKey) -> str:
    """Base64 of the raw public key (what a ledger header records)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def parse_public_key(text: str, *, source: str) -> Ed25519PublicKey:
    """A public key from its base64 text; raises CertificateError naming ``source`` if malformed."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError) as exc:
        raise CertificateError(f"{source}: not a base64 Ed25519 public key ({exc})") from None


def sign_hash(key: Ed25519PrivateKey, digest_hex: str) -> str:
    """Base64 signature of a record hash."""
    return base64.b64encode(key.sign(bytes.fromhex(digest_hex))).decode()


def signature_valid(key: Ed25519PublicKey, digest_hex: str, signature: str) -> bool:
    """Whether ``signature`` signs ``digest_hex`` under ``key``."""
    try:
        key.verify(base64.b64decode(signature, validate=True), bytes.fromhex(digest_hex))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True
