"""A site's SuperNode authentication key pair, in the format Flower expects.

Flower 1.41 authenticates SuperNodes with an elliptic-curve key on a NIST curve, the private key in OpenSSH format
(``--auth-supernode-private-key``) and the public key as an OpenSSH line (``flwr supernode register KEY.pub``).
Only public keys a server operator enrolled may join.
"""

from __future__ import annotations

import re
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from common.certs.files import check_private_permissions, read_file, write_private, write_public
from common.errors import CertificateError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NIST_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


def create_node_key(directory: Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key (OpenSSH private, 0600) and NAME.pub (OpenSSH public) in ``directory``."""
    if not _NAME.match(name):
        raise CertificateError(f"site name must be letters, digits, '.', '_' or '-' (at most 64); got {name!r}")
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    private_path = write_private(directory / f"{name}.key", private)
    public_path = write_public(directory / f"{name}.pub", public + f" fedtune-site-{name}\n".encode())
    return private_path, public_path


def load_node_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The SuperNode private key at ``path``; CertificateError if unreadable, exposed, or of the wrong kind."""
    data = read_file(path, "SuperNode private key")
    check_private_permissions(path)
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, UnsupportedAlgorithm, TypeError) as exc:
        raise CertificateError(f"{path}: not an unencrypted OpenSSH private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, NIST_CURVES):
        raise CertificateError(
            f"{path}: SuperNode keys must be ECDSA on a NIST curve (create one: fedtune certs node-key)"
        )
    return key


def load_node_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """An enrolled site's public key; CertificateError if unreadable or of the wrong kind."""
    data = read_file(path, "SuperNode public key")
    try:
        key = serialization.load_ssh_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertificateError(f"{path}: not an OpenSSH public key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, NIST_CURVES):
        raise CertificateError(f"{path}: SuperNode keys must be ECDSA on a NIST curve")
    return key
