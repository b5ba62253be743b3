"""deploy/docker-compose.yml cannot run here; read it and check it against the settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from esrec.settings import env_var_names, load_settings

COMPOSE = Path(__file__).parents[2] / "deploy" / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _esrec_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if s.get("image", "").startswith(
        "esrec") or "build" in s}


def test_esrec_services_use_only_known_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = _esrec_services(compose)
    assert services, "no esrec service in the compose file"
    known = env_var_names()
    for name, service in services.items():
        env = {k: str(v) for k, v in service["environment"].items()}
        unknown = {k for k in env if k.startswith("ESREC_")} - known
        assert not unknown, f"{name}: unknown settings {unknown}"
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = load_settings()  # valid as a whole, not just by name
        hosts = {urlparse(h).hostname for h in settings.es.hosts}
        hosts |= {s.rsplit(":", 1)[0] for s in settings.kafka.bootstrap_servers}
        hosts.add(urlparse(settings.mongo.uri.get_secret_value()).hostname)
        assert hosts <= set(compose["services"]), f"{name} points at {hosts}"
        for dependency in service["depends_on"]:
            assert dependency in compose["services"]


def test_real_servers_are_configured_as_esrec_needs(compose: dict[str, Any]) -> None:
    services = compose["services"]
    es_image = services["elasticsearch"]["image"]
    assert es_image.split(":")[-1].startswith("8.")
    assert services["elasticsearch"]["environment"]["discovery.type"] == "single-node"

    replica_set = services["mongo"]["command"][services["mongo"]["command"].index("--replSet") + 1]
    assert f"_id: '{replica_set}'" in services["mongo-init"]["command"][-1]
    uri = _esrec_services(compose)["esrec-doctor"]["environment"]["ESREC_MONGO__URI"]
    assert f"replicaSet={replica_set}" in uri

    kafka = services["kafka"]["environment"]
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert "zookeeper" not in COMPOSE.read_text().lower()
    advertised = kafka["KAFKA_ADVERTISED_LISTENERS"].split("://", 1)[1]
    assert advertised in _esrec_services(compose)["esrec-doctor"]["environment"][
        "ESREC_KAFKA__BOOTSTRAP_SERVERS"]


def test_dockerfile_installs_the_project_and_runs_esrec() -> None:
    dockerfile = (COMPOSE.parent / "Dockerfile").read_text()
    assert "pip install /app" in dockerfile
    assert 'ENTRYPOINT ["esrec"]' in dockerfile
    # the esrec user has no home: the cache (pulled versions, kept tower weights) lives
    # in a directory it owns
    assert "XDG_CACHE_HOME=/var/cache/esrec" in dockerfile
    assert "chown esrec /var/cache/esrec" in dockerfile


def test_indexer_service_exposes_its_health_port(compose: dict[str, Any]) -> None:
    """Docker restarts on liveness (/livez): a daemon waiting for a server is only degraded."""
    indexer = compose["services"]["esrec-indexer"]
    assert indexer["command"] == ["indexer", "run"]
    port = load_settings().indexer.metrics_port
    assert f"{port}:{port}" in indexer["ports"]
    assert f"localhost:{port}/livez" in " ".join(indexer["healthcheck"]["test"])
