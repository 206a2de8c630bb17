"""Who a site is, as the server knows it: the authenticated identity behind a Flower node id.

The server names a site only by what it can vouch for, never by what the site says about itself: a reply could
claim any name (three deployed sites left at the default name would merge into one entry), so replies carry none.
Everything the server writes about a site (results, rejections, exclusions, witnesses, the privacy report, logs)
uses the identity recorded here, in the run directory's identity table (``OUT/identities.json``):

* **Deployment.** ``fedtune server start --enroll NAME=KEY.pub`` registers each key with the SuperLink
  (``flwr supernode register KEY --name NAME``), which answers the node id it bound to that key. A SuperNode
  obtains that node id only by proving it holds the private key (``--enable-supernode-auth``), and every reply is
  routed under its sender's node id by the SuperLink, not by the sender. So node id -> (the operator's name, the
  key's SHA256 fingerprint) names the key's holder. ``server start`` writes the table before it submits the run;
  the ServerApp (another process) finds it through the run's ``out-dir``.
* **Simulation.** There are no keys: the operator runs every site. The simulated ClientApp, the operator's own
  code reading the operator's site table, registers its ``node_id`` under the table's site name before it replies.
  That is a local channel under the operator's run directory, not a field of any reply.
* **Anything else** (a plaintext deployment, ``flwr run . local``, a node registered outside ``server start``):
  ``node <id>``, the id the SuperLink authenticated, and no name.

Invariants: a name belongs to one node id and a key to one name; the first registration of a node id stands
(re-registering it identically is a no-op; anything else is a :class:`~common.errors.FederationError`). A key
re-enrolled with a new SuperLink state keeps its name and takes its new node id.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from filelock import FileLock

from common.certs.node_keys import load_node_public_key
from common.errors import ConfigError, FederationError
from common.fileio import atomic_write_json

log = logging.getLogger(__name__)

IDENTITIES_FILE = "identities.json"
#: What an operator may call a site: what ``fedtune certs node-key`` accepts as a key name.
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
Source = Literal["enrolled", "simulation", "unregistered"]


@dataclass(frozen=True)
class SiteIdentity:
    """A node as the server names it: the operator's name and, when enrolled, the fingerprint of its key."""

    node_id: int
    name: str
    key_fingerprint: str | None = None
    source: Source = "unregistered"

    @classmethod
    def unregistered(cls, node_id: int) -> SiteIdentity:
        """A node nobody registered in this run's table: named by its (SuperLink-authenticated) node id only."""
        return cls(node_id, f"node {node_id}")

    @property
    def label(self) -> str:
        """How messages name the site: ``site NAME (node ID)``, or ``node ID`` when it has no name."""
        return f"node {self.node_id}" if self.source == "unregistered" else f"site {self.name} (node {self.node_id})"

    def to_json(self) -> dict[str, Any]:
        """JSON-able form (one entry of the identity table)."""
        return {
            "node_id": self.node_id,
            "name": self.name,
            "key_fingerprint": self.key_fingerprint,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SiteIdentity:
        """Inverse of :meth:`to_json`; KeyError/TypeError/ValueError on a malformed entry."""
        source = str(data["source"])
        if source not in ("enrolled", "simulation"):
            raise ValueError(f"unknown identity source {source!r}")
        fingerprint = data.get("key_fingerprint")
        return cls(
            node_id=int(data["node_id"]),
            name=str(data["name"]),
            key_fingerprint=None if fingerprint is None else str(fingerprint),
            source="enrolled" if source == "enrolled" else "simulation",
        )


@dataclass(frozen=True)
class SiteKey:
    """A site public key to enrol, and the name the operator gives the site."""

    name: str
    public_key: Path

    @classmethod
    def parse(cls, text: str) -> SiteKey:
        """``NAME=KEY.pub``, or ``KEY.pub`` (named after the file's stem); ConfigError for an unusable name."""
        name, separator, path = text.partition("=")
        key = Path(path if separator else text)
        name = name if separator else key.stem
        if not SITE_NAME.match(name):
            raise ConfigError(
                f"--enroll {text!r}: a site name is letters, digits, '.', '_' or '-' (at most 64); got {name!r}"
            )
        return cls(name, key)


def key_fingerprint(public_key: Path) -> str:
    """The key's SHA256 fingerprint as ``ssh-keygen -l`` prints it (``SHA256:`` + unpadded base64)."""
    key = load_node_public_key(public_key)
    blob = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).split()[1]
    digest = hashlib.sha256(base64.b64decode(blob)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def check_site_keys(keys: Iterable[SiteKey]) -> None:
    """Every key readable and of the right kind, no name and no key given twice (before anything starts)."""
    names: dict[str, Path] = {}
    prints: dict[str, str] = {}
    for site in keys:
        fingerprint = key_fingerprint(site.public_key)  # CertificateError naming the file
        if site.name in names:
            raise ConfigError(f"--enroll: the name {site.name!r} is given to {names[site.name]} and {site.public_key}")
        if fingerprint in prints:
            raise ConfigError(f"--enroll: {site.public_key} is the key already enrolled as {prints[fingerprint]!r}")
        names[site.name], prints[fingerprint] = site.public_key, site.name


class Identities:
    """A snapshot of the identity table: node id -> identity, ``node <id>`` for the unregistered."""

    def __init__(self, entries: Iterable[SiteIdentity] = ()) -> None:
        self._by_node = {entry.node_id: entry for entry in entries}

    def of(self, node_id: int) -> SiteIdentity:
        """The identity of ``node_id``."""
        return self._by_node.get(node_id) or SiteIdentity.unregistered(node_id)

    def entries(self) -> list[SiteIdentity]:
        """Every registered identity, by name."""
        return sorted(self._by_node.values(), key=lambda entry: entry.name)


class IdentityTable:
    """The run directory's identity table (``OUT/identities.json``), written under a lock, replaced atomically."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / IDENTITIES_FILE
        self._lock = FileLock(str(self.path) + ".lock", timeout=60)

    def read(self) -> Identities:
        """The table as it stands (empty if there is none); FederationError if it is unreadable."""
        if not self.path.exists():
            return Identities()
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            return Identities(SiteIdentity.from_json(entry) for entry in document["sites"])
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise FederationError(f"{self.path}: unreadable identity table ({exc})") from None

    def register(self, identity: SiteIdentity) -> None:
        """Record ``identity`` (see the module's invariants); FederationError on a conflict."""
        if not SITE_NAME.match(identity.name):
            raise FederationError(f"{self.path}: {identity.name!r} is not a site name")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            entries = {entry.node_id: entry for entry in self.read().entries()}
            if entries.get(identity.node_id) == identity:
                return
            for entry in entries.values():
                _check_conflict(entry, identity, self.path)
            moved = [n for n, e in entries.items() if e.name == identity.name]  # the same key under a new node id
            for node in moved:
                del entries[node]
            entries[identity.node_id] = identity
            self._write(entries.values())

    def forget(self, source: Source) -> None:
        """Drop every entry registered by ``source`` (a new simulation's nodes get new ids)."""
        if not self.path.exists():
            return
        with self._lock:
            entries = self.read().entries()
            if any(entry.source == source for entry in entries):
                self._write(entry for entry in entries if entry.source != source)

    def _write(self, entries: Iterable[SiteIdentity]) -> None:
        ordered = sorted(entries, key=lambda entry: entry.name)
        atomic_write_json(self.path, {"version": 1, "sites": [entry.to_json() for entry in ordered]})


def _check_conflict(entry: SiteIdentity, new: SiteIdentity, path: Path) -> None:
    """FederationError if ``new`` would give a registered node, name or key a second meaning."""
    if entry.node_id == new.node_id:
        raise FederationError(f"{path}: node {new.node_id} is already registered as {entry.name!r}")
    if entry.name == new.name and (new.key_fingerprint is None or entry.key_fingerprint != new.key_fingerprint):
        raise FederationError(f"{path}: the name {new.name!r} already belongs to node {entry.node_id}")
    if entry.name != new.name and new.key_fingerprint is not None and entry.key_fingerprint == new.key_fingerprint:
        raise FederationError(f"{path}: the key {new.key_fingerprint} is already enrolled as {entry.name!r}")


#: Enrols one key under a name with the SuperLink: the node id it bound to the key, None if already enrolled.
Register = Callable[[Path, str], int | None]


def enrol_sites(keys: Iterable[SiteKey], register: Register, table: IdentityTable) -> list[SiteIdentity]:
    """Enrol every key and record each one's node id in ``table`` as soon as the SuperLink answers.

    A key the SuperLink already knows (a restarted server on the same run directory) keeps the identity the table
    holds for it. One the table does not know cannot be named (the SuperLink does not say which node id it has):
    it is logged, and its node shows as ``node <id>``.
    """
    known = {entry.key_fingerprint: entry for entry in table.read().entries() if entry.key_fingerprint}
    enrolled = []
    for site in keys:
        fingerprint = key_fingerprint(site.public_key)
        node_id = register(site.public_key, site.name)
        if node_id is None:
            previous = known.get(fingerprint)
            if previous is None:
                log.warning(
                    "%s (%s) was already enrolled, but %s does not record its node id: it will be named by node id",
                    site.public_key,
                    site.name,
                    table.path,
                )
                continue
            if previous.name != site.name:
                raise FederationError(
                    f"{site.public_key} was enrolled in this run as {previous.name!r}; enrol it under that name"
                )
            enrolled.append(previous)
            continue
        identity = SiteIdentity(node_id, site.name, fingerprint, "enrolled")
        table.register(identity)
        enrolled.append(identity)
    return enrolled


def register_simulated_node(out_dir: Path, node_id: int, name: str) -> None:
    """Record a simulated node's name (called by the simulated ClientApp, the operator's code, before it replies)."""
    table = IdentityTable(out_dir)
    if table.read().of(node_id).name != name:
        table.register(SiteIdentity(node_id, name, None, "simulation"))
