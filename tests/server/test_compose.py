"""docker-compose.yml, checked for structure (no Docker engine here): a SuperLink and two SuperNodes with TLS and node
authentication, certificates and ledgers on volumes, and only the fleet proxy's port published."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICE_KEYS = {
    "build",
    "image",
    "command",
    "entrypoint",
    "volumes",
    "networks",
    "ports",
    "expose",
    "depends_on",
    "restart",
    "environment",
    "healthcheck",
    "user",
}


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_structure(compose):
    assert set(compose) <= {"services", "volumes", "networks"}
    services = compose["services"]
    assert {"superlink", "fleet-proxy", "site-a", "site-b"} <= set(services)
    for name, service in services.items():
        assert set(service) <= SERVICE_KEYS, (name, set(service) - SERVICE_KEYS)
        assert "image" in service or "build" in service, name
        for dependency in service.get("depends_on", []):
            assert dependency in services
        for network in service.get("networks", []):
            assert network in compose["networks"]
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], f"{name}: undefined volume {source}"
    assert (ROOT / "Dockerfile").is_file()


def test_only_the_fleet_proxy_is_published(compose):
    published = {name for name, service in compose["services"].items() if service.get("ports")}
    assert published == {"fleet-proxy"}
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "location /v1/fleet/" in nginx and "return 404" in nginx
    assert "/v1/control" not in nginx.split("location /v1/fleet/")[1]


def test_tls_and_node_authentication_everywhere(compose):
    text = (ROOT / "docker-compose.yml").read_text()
    assert "--insecure" not in text
    server = compose["services"]["superlink"]["command"]
    assert "--certs=/certs" in server and sum(arg.startswith("--enroll=") for arg in server) == 2
    for site in ("site-a", "site-b"):
        service = compose["services"][site]
        assert "--ca=/certs/ca.pem" in service["command"] and "--key=/keys/site.key" in service["command"]
        mounts = service["volumes"]
        assert any(m.endswith(":/ledger") and not m.startswith(".") for m in mounts), "ledger on a named volume"
        assert all(m.endswith(":ro") for m in mounts if "/keys/" in m or "/certs" in m), "secrets read-only"
        assert f"./deploy/keys/{site}.key:/keys/site.key:ro" in mounts
        other = "site-b" if site == "site-a" else "site-a"
        assert not any(other in m for m in mounts), "a site never sees another site's key or data"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_docker_compose_config_validates():
    result = subprocess.run(["docker-compose", "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
