"""Apache Kafka itself for the local stack: one KRaft node (broker and controller in one
JVM) run from the jars Apache publishes on Maven Central, on the machine's Java 17+.

The jars are resolved once by Maven, checksums verified, into a per-version cache
(``~/.cache/esrec/kafka-<version>/lib``); every later start is offline. Storage is
formatted by Kafka's own storage tool before the first start, as ``kafka-storage.sh``
does, and the node's settings are the single-node ones of Kafka's own
``config/server.properties`` (replication factor 1 for the internal topics).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from esrec.ports import free_port
from runtime import local_cache
from runtime.errors import Refused

KAFKA_VERSION = "4.1.1"
# Kafka's own distribution logs through log4j2 behind slf4j 1.7: the same binding
LOG4J_VERSION = "2.24.3"
HEAP = "512m"
FETCH_TIMEOUT_S = 900.0
FORMAT_TIMEOUT_S = 120.0
MIN_JAVA = 17

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>esrec.local</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

# the node's log goes to stdout, which the stack sends to its log file
_LOG4J2 = """Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Logger:
      - name: kafka
        level: INFO
      - name: org.apache.kafka
        level: INFO
      - name: state.change.logger
        level: WARN
    Root:
      level: WARN
      AppenderRef:
        - ref: STDOUT
"""


class KafkaUnavailable(Refused):
    """Apache Kafka cannot run here: no Java 17+, no cache and no Maven, or its storage
    could not be formatted."""


def cache_dir() -> Path:
    """Where this version's jars live: ESREC_KAFKA_CACHE, else the user's cache folder."""
    if os.environ.get("ESREC_KAFKA_CACHE"):
        return Path(os.environ["ESREC_KAFKA_CACHE"]) / f"kafka-{KAFKA_VERSION}"
    return local_cache.cache_dir(f"kafka-{KAFKA_VERSION}")


def _lib() -> Path:
    return cache_dir() / "lib"


def _fetched() -> bool:
    return (cache_dir() / "complete").is_file()


def java_binary() -> str:
    """The Java that runs the node (JAVA_HOME first, as Kafka's scripts do), 17 or newer."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).is_file():
        raise KafkaUnavailable(f"Java {MIN_JAVA}+ not found (no java on PATH or in JAVA_HOME)")
    try:
        shown = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise KafkaUnavailable(f"{java} -version failed: {error}") from error
    found = re.search(r'version "(\d+)', shown.stderr)
    if found is None or int(found.group(1)) < MIN_JAVA:
        raise KafkaUnavailable(f"{java} is not Java {MIN_JAVA}+: {shown.stderr.splitlines()[:1]}")
    return java


def unavailable_reason() -> str | None:
    """None when Apache Kafka can start here, else why not, in one line."""
    try:
        java_binary()
    except KafkaUnavailable as error:
        return str(error)
    if not _fetched() and shutil.which("mvn") is None:
        return f"Kafka {KAFKA_VERSION} is not in {cache_dir()} and Maven (mvn) is not installed"
    return None


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """One fetch at a time per cache (tests and a CLI may start stacks together)."""
    cache_dir().parent.mkdir(parents=True, exist_ok=True)
    with open(cache_dir().parent / f".kafka-{KAFKA_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_jars(progress: TextIO = sys.stderr) -> Path:
    """The folder of the node's jars, resolved by Maven (checksums verified) on first use."""
    if _fetched():
        return _lib()
    with _cache_lock():
        if _fetched():  # another process fetched it while we waited
            return _lib()
        mvn = shutil.which("mvn")
        if mvn is None:
            raise KafkaUnavailable(unavailable_reason() or "Maven (mvn) is not installed")
        print(f"kafka: fetching Apache Kafka {KAFKA_VERSION} from Maven Central into "
              f"{cache_dir()} (once, about 45 MB)", file=progress, flush=True)
        with tempfile.TemporaryDirectory(dir=cache_dir().parent) as work:
            _resolve(mvn, Path(work), progress)
            target = cache_dir()
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            os.replace(Path(work) / "lib", target / "lib")
            (target / "complete").write_text(f"kafka {KAFKA_VERSION}\nlog4j {LOG4J_VERSION}\n")
        print(f"kafka: {len(list(_lib().glob('*.jar')))} jars ready", file=progress, flush=True)
    return _lib()


def _resolve(mvn: str, work: Path, progress: TextIO) -> None:
    (work / "pom.xml").write_text(_POM.format(kafka=KAFKA_VERSION, log4j=LOG4J_VERSION))
    command = [mvn, "-B", "--strict-checksums", "-f", str(work / "pom.xml"),
               "dependency:copy-dependencies", "-DincludeScope=runtime",
               f"-DoutputDirectory={work / 'lib'}"]
    tail: list[str] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, text=True, cwd=work) as maven:
        assert maven.stdout is not None
        for line in maven.stdout:
            tail = [*tail[-30:], line.rstrip()]
            fetched = re.match(r"Downloaded from \S+: \S+/([^/]+\.jar) \(([^)]*)\)", line)
            if fetched:
                print(f"kafka: fetched {fetched.group(1)} ({fetched.group(2)})",
                      file=progress, flush=True)
        code = maven.wait(FETCH_TIMEOUT_S)
    if code != 0:
        raise KafkaUnavailable(
            f"Maven could not resolve org.apache.kafka:kafka_2.13:{KAFKA_VERSION} (exit {code}); "
            "its output ends:\n" + "\n".join(tail[-12:]))


def _cluster_id() -> str:
    """A cluster id as Kafka's own Uuid.randomUuid makes one: 16 random bytes, URL-safe
    base64, never starting with "-" (a command line would read it as an option)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def server_properties(data: Path, host: str, port: int, controller_port: int) -> str:
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@{host}:{controller_port}",
        f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
        f"advertised.listeners=PLAINTEXT://{host}:{port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        f"log.dirs={data / 'log'}",
        "num.partitions=1",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        # a lone node: no other consumers are worth waiting for before the first rebalance
        "group.initial.rebalance.delay.ms=0",
        "",
    ])


def command(data: Path, host: str, port: int) -> list[str]:
    """Prepare ``data`` (settings; storage formatted on first use) and return the command
    that runs the node in the foreground."""
    java, lib = java_binary(), ensure_jars()
    classpath = f"{lib}/*"
    properties = data / "server.properties"
    properties.write_text(server_properties(data, host, port, free_port(host)))
    (data / "log4j2.yaml").write_text(_LOG4J2)
    if not (data / "log" / "meta.properties").is_file():
        formatted = subprocess.run(
            [java, "-cp", classpath, "kafka.tools.StorageTool", "format",
             f"--cluster-id={_cluster_id()}", f"--config={properties}"],
            capture_output=True, text=True, timeout=FORMAT_TIMEOUT_S)
        if formatted.returncode != 0:
            raise KafkaUnavailable("formatting its storage failed: "
                             + (formatted.stdout + formatted.stderr)[-800:])
    return [java, f"-Xms{HEAP}", f"-Xmx{HEAP}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={data / 'log4j2.yaml'}",
            "-cp", classpath, "kafka.Kafka", str(properties)]
