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


def compose_binary() -> str | None:
    """docker-compose on PATH, else the one `make test` installs into .venv-compose (see the Makefile)."""
    local = ROOT / ".venv-compose" / "bin" / "docker-compose"
    return shutil.which("docker-compose") or (str(local) if local.is_file() else None)


@pytest.mark.skipif(compose_binary() is None, reason="docker-compose is not installed (`make test` installs it)")
def test_docker_compose_config_validates(tmp_path):
    """The Compose tool's own schema accepts the file, and rejects a one-letter typo in it (so it really checks)."""
    binary = compose_binary()
    assert binary is not None

    def validate(directory: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([binary, "config", "-q"], cwd=directory, capture_output=True, text=True, timeout=120)

    result = validate(ROOT)
    assert result.returncode == 0, result.stderr
    broken = (ROOT / "docker-compose.yml").read_text().replace("    restart: on-failure", "    restrat: on-failure", 1)
    (tmp_path / "docker-compose.yml").write_text(broken)
    result = validate(tmp_path)
    assert result.returncode != 0 and "restrat" in result.stderr


def test_service_commands_parse_with_the_fedtune_cli(compose):
    """Every fedtune service's command line is accepted by the CLI it runs (option names, types, required options)."""
    import click
    import typer

    from cli.app import app

    root = typer.main.get_command(app)
    checked = 0
    for name, service in compose["services"].items():
        if service.get("image", "").startswith("nginx"):
            continue
        path = service["command"][:2]
        group = root
        context = click.Context(root)
        for word in path:
            assert isinstance(group, click.Group)
            command = group.get_command(context, word)
            assert command is not None, f"{name}: fedtune has no command {path}"
            group = command
        group.make_context(" ".join(path), list(service["command"][2:]))  # raises on an unknown or bad option
        checked += 1
    assert checked == 3
