"""Where the test servers come from (docs/ARCHITECTURE.md, "Servers"), in this order.

1. An explicit URL in the environment (ESREC_TEST_ES_URL, ESREC_TEST_MONGO_URL,
   ESREC_TEST_KAFKA_BOOTSTRAP), so real servers, e.g. from deploy/, can be qualified.
2. testcontainers, when a Docker engine answers.
3. esrec's own local stack on free loopback ports, stopped by PID when the session ends
   (and by the kernel if the test process dies): Apache Kafka itself where Java 17+ runs
   (ESREC_TEST_KAFKA=stand-in picks the noida stand-in), the ES and MongoDB stand-ins.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from esrec import apache_kafka
from esrec.stack import LocalStack

ENV_URLS = {
    "elasticsearch": "ESREC_TEST_ES_URL",
    "mongodb": "ESREC_TEST_MONGO_URL",
    "kafka": "ESREC_TEST_KAFKA_BOOTSTRAP",
}

ES_IMAGE = "docker.elastic.co/elasticsearch/elasticsearch:8.15.3"
MONGO_IMAGE = "mongo:7.0"
KAFKA_IMAGE = "confluentinc/cp-kafka:7.7.1"
KAFKA_ENGINE_ENV = "ESREC_TEST_KAFKA"  # apache (the default) or stand-in


def local_kafka_engine() -> str:
    """Which Kafka the local stack runs for the tests: Apache Kafka unless the stand-in
    is asked for or Java cannot run it (then the stack says why, once)."""
    return os.environ.get(KAFKA_ENGINE_ENV) or "apache"


def docker_available() -> bool:
    """True when a Docker engine answers (the client alone is not enough)."""
    if os.environ.get("ESREC_TEST_NO_DOCKER"):
        return False
    try:
        import docker

        docker.from_env(timeout=2).ping()
    except Exception:  # no engine, no socket, no permission: all mean "not here"
        return False
    return True


@contextlib.contextmanager
def _es_container() -> Iterator[str]:
    from testcontainers.elasticsearch import ElasticSearchContainer

    with ElasticSearchContainer(ES_IMAGE, mem_limit="2g") as container:
        yield container.get_url()


@contextlib.contextmanager
def _mongo_container() -> Iterator[str]:
    """A single-node replica set: change streams refuse a standalone mongod."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    container = DockerContainer(MONGO_IMAGE).with_command("--replSet rs0 --bind_ip_all")
    container.with_exposed_ports(27017)
    with container:
        wait_for_logs(container, "Waiting for connections")
        container.exec(["mongosh", "--quiet", "--eval",
                        "rs.initiate({_id: 'rs0', members: [{_id: 0, host: 'localhost:27017'}]})"])
        host, port = container.get_container_host_ip(), container.get_exposed_port(27017)
        yield f"mongodb://{host}:{port}/?directConnection=true"


@contextlib.contextmanager
def _kafka_container() -> Iterator[str]:
    from testcontainers.kafka import KafkaContainer

    with KafkaContainer(KAFKA_IMAGE).with_kraft() as container:
        yield container.get_bootstrap_server()


CONTAINERS: dict[str, Callable[[], contextlib.AbstractContextManager[str]]] = {
    "elasticsearch": _es_container,
    "mongodb": _mongo_container,
    "kafka": _kafka_container,
}


class ServerPool:
    """Resolves each server once per test session and releases them all at the end."""

    def __init__(self, stack_dir: Path) -> None:
        self._stack = LocalStack(stack_dir, bound=True)
        self._expiring = LocalStack(stack_dir / "expiring-kafka", bound=True)
        self._exit = contextlib.ExitStack()
        self._urls: dict[str, str] = {}
        self._docker: bool | None = None

    def url(self, service: str) -> str:
        if service not in self._urls:
            self._urls[service] = self._resolve(service)
        return self._urls[service]

    def expiring_kafka(self) -> str:
        """A Kafka whose group coordinator expires a killed member (crash tests): Apache
        Kafka, a real or containerised one, else tansu (noida never expires one)."""
        apache = local_kafka_engine() == "apache" and apache_kafka.unavailable_reason() is None
        if os.environ.get(ENV_URLS["kafka"]) or self._docker_up() or apache:
            return self.url("kafka")
        if "expiring-kafka" not in self._urls:
            self._urls["expiring-kafka"] = self._expiring.up(
                ["kafka"], pick_free_ports=True, kafka="tansu")["kafka"].url
        return self._urls["expiring-kafka"]

    def _docker_up(self) -> bool:
        if self._docker is None:
            self._docker = docker_available()
        return self._docker

    def _resolve(self, service: str) -> str:
        if os.environ.get(ENV_URLS[service]):
            return os.environ[ENV_URLS[service]]
        if self._docker_up():
            return self._exit.enter_context(CONTAINERS[service]())
        return self._stack.up([service], pick_free_ports=True,
                              kafka=local_kafka_engine())[service].url

    def close(self) -> None:
        self._exit.close()
        self._stack.down()
        self._expiring.down()
