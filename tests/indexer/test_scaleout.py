"""The distributed mode as users run it: `esrec indexer relay` (a leader and a standby)
and `esrec indexer worker`s as real processes, a build whose backfill the workers share,
and, in the chaos test, workers and relays SIGKILLed and a leader SIGSTOPped past its
lease. At the end every index equals the catalog, version by version."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from esrec.settings import Settings
from esrec.stack import free_port
from indexer.service import Services
from tests.indexer.helpers import (
    CATALOG,
    ServingProbe,
    cli_env,
    mismatches,
    services,
    write_changes,
)
from tests.processes import EsrecProcess, metric
from towers.artifact import ModelArtifact
from towers.dataset import Collections, write_mongo
from towers.synth import generate

pytestmark = pytest.mark.slow
V1, V2 = "test-model@1", "test-model@2"
CONVERGE_S = 300.0
LEASE_TTL_S = 4.0


class Cluster:
    """Relays and workers of one test, each a real `esrec` process with its own port."""

    def __init__(self, settings: Settings, tmp_path: Path, **extra: str) -> None:
        self.env = cli_env(settings, ESREC_INDEXER__MODE="distributed",
                           ESREC_INDEXER__WORKER_GROUP=f"{settings.index.prefix}-workers",
                           ESREC_INDEXER__PARTITIONS="6",
                           ESREC_INDEXER__LEASE_TTL_S=str(LEASE_TTL_S),
                           ESREC_INDEXER__WORKER_SESSION_TIMEOUT_MS="6000",
                           # tansu holds a rebalance until every member it knew rejoins
                           # or this passes, even one killed before it began
                           ESREC_INDEXER__WORKER_REBALANCE_TIMEOUT_MS="20000",
                           ESREC_INDEXER__RETRY_MAX_DELAY_S="2",
                           ESREC_ROLLOUT__FOLLOW_INTERVAL_S="1",
                           # the roll's gates run while changes flow, on servers sharing
                           # this machine's cores: what the test checks is that no answer
                           # mixes versions and both indices end equal to the catalog
                           ESREC_ROLLOUT__MIN_COVERAGE="0.98",
                           ESREC_ROLLOUT__MAX_P99_MS="3000", **extra)
        self.tmp_path = tmp_path
        self.processes: dict[str, EsrecProcess] = {}
        self.ports: dict[str, int] = {}

    def start(self, name: str) -> EsrecProcess:
        """``relay-*`` or ``worker-*``: (re)start that process."""
        port = self.ports.setdefault(name, free_port())
        kind = name.split("-")[0]
        args = ("indexer", kind, *(("--name", name) if kind == "relay" else ()),
                "--metrics-port", str(port))
        process = self.processes.get(name) or EsrecProcess(
            self.env, self.tmp_path / f"{name}.log", *args)
        self.processes[name] = process.start()
        return process

    def esrec(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "esrec", *args], env=self.env,
                              capture_output=True, text=True, timeout=600)

    def alive(self) -> tuple[bool, str]:
        dead = [name for name, p in self.processes.items() if not p.alive()]
        return not dead, "\n".join(f"== {name}\n{self.processes[name].text()[-2500:]}"
                                   for name in dead)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.process is not None and process.process.poll() is None:
                process.stop()  # SIGTERM: drains and exits 0

    def end(self) -> None:
        """After a test, pass or fail: SIGTERM, so a group member leaves (noida Kafka never
        expires a killed one); SIGKILL what does not exit."""
        for process in self.processes.values():
            if process.alive():
                assert process.process is not None
                process.process.terminate()
        for process in self.processes.values():
            if process.process is not None:
                try:
                    process.process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()


def _leader(svc: Services) -> str | None:
    lease = svc.checkpoints.collection.find_one({"_id": "relay|items"}) or {}
    return lease.get("holder")


def _leading(svc: Services, cluster: Cluster) -> str | None:
    """The relay that leads now: the lease's holder, if that process says it holds it (a
    killed leader's name stays in the lease until it expires, and its restart is a
    standby under the same name)."""
    name = _leader(svc)
    if name not in cluster.processes or not cluster.processes[name].alive():
        return None
    try:
        leads = metric(cluster.ports[name], "esrec_relay_leader") == 1.0
    except OSError:  # restarted, not serving /metrics yet
        return None
    return name if leads else None


def _until(check: Callable[[], bool], what: str, cluster: Cluster,
           timeout_s: float = CONVERGE_S, detail: Callable[[], object] = lambda: "") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        alive, logs = cluster.alive()
        assert alive, f"a process died while waiting for {what}:\n{logs}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s}s: {detail()}"
        time.sleep(1.0)


def _rejoined(process: EsrecProcess, since: int) -> bool:
    """The restarted process got its partitions (its log after ``since`` characters)."""
    text = process.text()[since:]
    return text.rfind("partitions assigned") > text.find("worker consuming") >= 0


def _converged(es: Elasticsearch, svc: Services, index: str, artifact: ModelArtifact,
               last: list[list[str]]) -> Callable[[], bool]:
    def check() -> bool:
        last[:] = [mismatches(es, index, svc.items, artifact)]
        return last[0] == []
    return check


@pytest.fixture
def catalog(settings: Settings, es: Elasticsearch, artifact_dir: Path) -> Services:
    svc = services(settings, es, artifact_dir)
    write_mongo(generate(CATALOG), svc.db, Collections())
    return svc


@pytest.fixture
def cluster(settings: Settings, tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(settings, tmp_path)
    yield cluster
    cluster.end()


def test_a_roll_with_three_workers_sharing_the_backfill_never_mixes_versions(
        catalog: Services, cluster: Cluster, es: Elasticsearch, artifact_dir: Path,
        v2_dir: Path) -> None:
    svc = catalog
    svc.registry.publish(v2_dir)
    for name in ("relay-a", "relay-b", "worker-1", "worker-2", "worker-3"):
        cluster.start(name)
    _until(lambda: _leader(svc) is not None, "a leading relay", cluster, 60)
    built = cluster.esrec("models", "build", V1)  # the workers write the backfill
    assert built.returncode == 0, built.stderr[-3000:]
    assert cluster.esrec("models", "promote", V1).returncode == 0
    v1_index = svc.index_of(V1) or ""
    with ServingProbe(svc, es) as probe:
        writer = threading.Thread(target=write_changes, args=(svc.items, 3000, 21, 0.003))
        writer.start()
        rolled = cluster.esrec("models", "roll", V2)  # build (workers) -> gates -> promote
        writer.join()
        assert rolled.returncode == 0, rolled.stdout + rolled.stderr[-3000:]
        v2_index = svc.index_of(V2) or ""
        last: list[list[str]] = [[]]
        for index, directory in ((v1_index, artifact_dir), (v2_index, v2_dir)):
            _until(_converged(es, svc, index, ModelArtifact.load(directory), last),
                   f"{index} equal to the catalog", cluster, detail=lambda: last[0][:10])
        failures, answered = probe.stop()
    assert failures == [] and answered.get(V1, 0) > 0 and answered.get(V2, 0) > 0
    chunks = [metric(cluster.ports[f"worker-{n}"], "esrec_worker_backfill_chunks_total")
              for n in (1, 2, 3)]
    assert sum(1 for count in chunks if count) >= 2, chunks  # the backfill was shared

    leader = _leader(svc) or ""
    cluster.processes[leader].stop()  # a clean stop hands the lease over at once
    _until(lambda: _leader(svc) not in (None, leader), "the standby leading", cluster, 60)
    del cluster.processes[leader]
    write_changes(svc.items, 500, seed=22)
    for index, directory in ((v1_index, artifact_dir), (v2_index, v2_dir)):
        _until(_converged(es, svc, index, ModelArtifact.load(directory), last),
               f"{index} equal to the catalog after the hand-over", cluster,
               detail=lambda: last[0][:10])
    cluster.stop()
    for process in cluster.processes.values():
        assert "Traceback" not in process.text(), process.text()[-3000:]


@pytest.fixture
def expiring_cluster(settings: Settings, servers: object, tmp_path: Path) -> Iterator[Cluster]:
    """On a Kafka that expires a killed member (tansu here; noida never does)."""
    bootstrap = servers.expiring_kafka()  # type: ignore[attr-defined]
    cluster = Cluster(settings, tmp_path, ESREC_KAFKA__BOOTSTRAP_SERVERS=bootstrap)
    yield cluster
    cluster.end()


@pytest.mark.chaos
def test_chaos_kills_and_a_paused_leader_lose_nothing(
        catalog: Services, expiring_cluster: Cluster, es: Elasticsearch,
        artifact_dir: Path) -> None:
    svc, cluster = catalog, expiring_cluster
    for name in ("relay-a", "relay-b", "worker-1", "worker-2", "worker-3"):
        cluster.start(name)
    _until(lambda: _leader(svc) is not None, "a leading relay", cluster, 60)
    built = cluster.esrec("models", "build", V1)
    assert built.returncode == 0, built.stderr[-3000:]
    index = svc.index_of(V1) or ""
    made: list[int] = []
    changes = int(os.environ.get("ESREC_CHAOS_CHANGES", "30000"))
    writer = threading.Thread(target=lambda: made.append(
        write_changes(svc.items, changes, seed=31, pace_s=0.001)))
    writer.start()
    rng = random.Random(5)
    worker_kills = relay_kills = 0
    while writer.is_alive() or worker_kills < 5 or relay_kills < 2:
        time.sleep(rng.uniform(2.0, 4.0))
        if worker_kills < 5 or (writer.is_alive() and rng.random() < 0.5):
            victim = f"worker-{rng.randint(1, 3)}"
            cluster.processes[victim].kill()
            logged = len(cluster.processes[victim].text())
            restarted = cluster.start(victim)
            worker_kills += 1
            # a crash every few seconds forever is an outage, not chaos: the group must
            # be able to rebalance (the dead member expires after the session timeout)
            _until(lambda p=restarted, n=logged: _rejoined(p, n), f"{victim} back in the group",
                   cluster, 120)
        elif relay_kills < 2:
            leader = _leading(svc, cluster)
            if leader is not None:
                cluster.processes[leader].kill()
                cluster.start(leader)
                relay_kills += 1
    writer.join()
    assert made[0] >= changes and worker_kills >= 5 and relay_kills >= 2

    # a leader paused past its lease: the standby takes over; woken up, the old one is
    # refused: it neither sends nor saves under the lost epoch
    _until(lambda: _leading(svc, cluster) is not None, "a leading relay", cluster, 60)
    paused = _leading(svc, cluster) or ""
    process = cluster.processes[paused].process
    assert process is not None
    os.kill(process.pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 60
        while _leader(svc) in (None, paused):
            assert time.monotonic() < deadline, "the standby did not take over"
            time.sleep(0.5)
        write_changes(svc.items, 300, seed=32)  # published by the new leader
    finally:
        os.kill(process.pid, signal.SIGCONT)
    _until(lambda: "lease lost" in cluster.processes[paused].text(), "the old leader refused",
           cluster, 60, detail=lambda: cluster.processes[paused].text()[-3000:])
    assert (metric(cluster.ports[paused], "esrec_relay_fenced_total") or 0) >= 1
    last: list[list[str]] = [[]]
    _until(_converged(es, svc, index, ModelArtifact.load(artifact_dir), last),
           f"{index} equal to the catalog", cluster,
           detail=lambda: (last[0][:10], _trace(svc, cluster, index, last[0][:5])))
    cluster.stop()


def _trace(svc: Services, cluster: Cluster, index: str, problems: list[str]) -> object:
    """Where the changes of the documents that differ went: their messages on the topic
    (partition, offset, epoch) and the saved positions, for a failure's report."""
    from kafka import KafkaConsumer, TopicPartition

    from indexer.messages import decode_change, key

    ids = [problem.rsplit(": ", 1)[0] for problem in problems]
    topic = svc.settings.kafka.topics.item_changes
    consumer = KafkaConsumer(bootstrap_servers=cluster.env["ESREC_KAFKA__BOOTSTRAP_SERVERS"],
                             consumer_timeout_ms=5000, auto_offset_reset="earliest")
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    wanted, found = {key(doc_id) for doc_id in ids}, []
    for record in consumer:
        if record.key in wanted:
            message = decode_change(record.value)
            found.append((record.key, record.partition, record.offset, message.epoch,
                          message.change.op))
    consumer.close()
    checkpoints = svc.checkpoints.collection
    return {"messages": found, "offsets": checkpoints.find_one(
        {"_id": f"offsets|{topic}|{index}"}), "epochs": checkpoints.find_one(
        {"_id": f"epochs|{topic}"})}
