"""The distributed mode as users run it: `esrec indexer relay` (a leader and a standby)
and `esrec indexer worker`s as real processes, a build whose backfill the workers share,
and, in the chaos test, workers and relays SIGKILLed and a leader SIGSTOPped past its
lease. At the end every index equals the catalog, version by version."""

from __future__ import annotations

import contextlib
import json
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

from esrec.ports import free_port
from esrec.settings import Settings
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
WORKERS = ("worker-1", "worker-2", "worker-3")
PARTITIONS = 6


class Cluster:
    """Relays and workers of one test, each a real `esrec` process with its own port."""

    def __init__(self, settings: Settings, tmp_path: Path, **extra: str) -> None:
        self.env = cli_env(settings, ESREC_INDEXER__MODE="distributed",
                           ESREC_INDEXER__WORKER_GROUP=f"{settings.index.prefix}-workers",
                           ESREC_INDEXER__PARTITIONS=str(PARTITIONS),
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


@pytest.mark.long
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
    cluster.processes.pop(leader).stop()  # a clean stop hands the lease over at once
    _until(lambda: _leader(svc) not in (None, leader), "the standby leading", cluster, 60)
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
    """On a Kafka that expires a killed member: Apache Kafka (tansu where Java cannot run
    it; noida never expires one)."""
    bootstrap = servers.expiring_kafka()  # type: ignore[attr-defined]
    cluster = Cluster(settings, tmp_path, ESREC_KAFKA__BOOTSTRAP_SERVERS=bootstrap)
    yield cluster
    cluster.end()


def _summed(cluster: Cluster, name: str) -> float:
    """A metric summed over the workers (one not serving /metrics yet counts 0)."""
    total = 0.0
    for worker in WORKERS:
        with contextlib.suppress(OSError):
            total += metric(cluster.ports[worker], name) or 0.0
    return total


def _kill_worker(cluster: Cluster, victim: str,
                 writing: Callable[[], bool]) -> dict[str, float | None]:
    """SIGKILL a worker and restart it at once, as a supervisor would; returns the seconds
    from the kill until the group owns every partition again with the restarted member in
    it (the dead member expired), and until the workers write again (None if the changes
    stopped first)."""
    logged = len(cluster.processes[victim].text())
    killed_at = time.monotonic()
    cluster.processes[victim].kill()
    restarted = cluster.start(victim)
    deadline = killed_at + 120
    # a crash every few seconds forever is an outage, not chaos: the group must be able to
    # rebalance (the dead member expires after the session timeout)
    while not (_rejoined(restarted, logged)
               and _summed(cluster, "esrec_worker_partitions") == PARTITIONS):
        alive, logs = cluster.alive()
        assert alive, f"a process died while {victim} rejoined:\n{logs}"
        assert time.monotonic() < deadline, f"{victim} not back in the group within 120 s"
        time.sleep(0.2)
    reowned_s = time.monotonic() - killed_at
    before = _summed(cluster, "esrec_indexer_events_total")
    while writing() and time.monotonic() < deadline:  # no new changes: nothing to time
        if _summed(cluster, "esrec_indexer_events_total") > before:
            return {"reowned_s": round(reowned_s, 2),
                    "writing_s": round(time.monotonic() - killed_at, 2)}
        time.sleep(0.2)
    return {"reowned_s": round(reowned_s, 2), "writing_s": None}


def _chaos(svc: Services, cluster: Cluster, es: Elasticsearch, artifact_dir: Path,
           changes: int, worker_kills: int, relay_kills: int) -> dict[str, object]:
    """Random worker and leader SIGKILLs while changes flow, then a leader SIGSTOPped past
    its lease; the index must end equal to the catalog. Returns the run's figures."""
    for name in ("relay-a", "relay-b", *WORKERS):
        cluster.start(name)
    _until(lambda: _leader(svc) is not None, "a leading relay", cluster, 60)
    built = cluster.esrec("models", "build", V1)
    assert built.returncode == 0, built.stderr[-3000:]
    index = svc.index_of(V1) or ""
    made: list[int] = []
    writer = threading.Thread(target=lambda: made.append(
        write_changes(svc.items, changes, seed=31, pace_s=0.001)))
    writer.start()
    rng = random.Random(5)
    rebalances: list[dict[str, float | None]] = []
    relays_killed = 0
    while writer.is_alive() or len(rebalances) < worker_kills or relays_killed < relay_kills:
        time.sleep(rng.uniform(2.0, 4.0))
        if len(rebalances) < worker_kills or (writer.is_alive() and rng.random() < 0.5):
            rebalances.append(_kill_worker(cluster, rng.choice(WORKERS), writer.is_alive))
        elif relays_killed < relay_kills:
            leader = _leading(svc, cluster)
            if leader is not None:
                cluster.processes[leader].kill()
                cluster.start(leader)
                relays_killed += 1
    writer.join()
    assert made[0] >= changes

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
    return {"kafka": cluster.env["ESREC_KAFKA__BOOTSTRAP_SERVERS"], "changes": made[0] + 300,
            "documents": svc.items.count_documents({}), "worker_kills": len(rebalances),
            "leader_kills": relays_killed, "leader_paused": 1, "rebalances": rebalances,
            "lost": sum("missing" in p or "tombstoned" in p for p in last[0]),
            "stale": sum("stale" in p for p in last[0]),
            "resurrected": sum("live in ES" in p for p in last[0])}


@pytest.mark.long
def test_a_short_chaos_run_loses_nothing(catalog: Services, expiring_cluster: Cluster,
                                         es: Elasticsearch, artifact_dir: Path) -> None:
    """The chaos run, small enough for every CI run: 5k changes, 3 worker SIGKILLs, a
    leader SIGKILL and a leader paused past its lease."""
    report = _chaos(catalog, expiring_cluster, es, artifact_dir, 5000, 3, 1)
    print(f"chaos report: {json.dumps(report)}")


@pytest.mark.chaos
def test_chaos_kills_and_a_paused_leader_lose_nothing(
        catalog: Services, expiring_cluster: Cluster, es: Elasticsearch,
        artifact_dir: Path) -> None:
    changes = int(os.environ.get("ESREC_CHAOS_CHANGES", "30000"))
    report = _chaos(catalog, expiring_cluster, es, artifact_dir, changes, 5, 2)
    print(f"chaos report: {json.dumps(report)}")


def _trace(svc: Services, cluster: Cluster, index: str, problems: list[str]) -> object:
    """Where the changes of the documents that differ went: their messages on the topic
    (partition, offset, epoch) and the saved positions, for a failure's report."""
    from kafka import KafkaConsumer, TopicPartition

    from indexer.messages import decode_pack, key

    ids = [problem.rsplit(": ", 1)[0] for problem in problems]
    topic = svc.settings.kafka.topics.item_changes
    consumer = KafkaConsumer(bootstrap_servers=cluster.env["ESREC_KAFKA__BOOTSTRAP_SERVERS"],
                             consumer_timeout_ms=5000, auto_offset_reset="earliest")
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    wanted, found = {key(doc_id) for doc_id in ids}, []
    for record in consumer:
        pack = decode_pack(record.value)
        found.extend((key(change.doc_id), record.partition, record.offset, pack.epoch,
                      change.op) for change in pack.changes if key(change.doc_id) in wanted)
    consumer.close()
    checkpoints = svc.checkpoints.collection
    return {"messages": found, "offsets": checkpoints.find_one(
        {"_id": f"offsets|{topic}|{index}"}), "epochs": checkpoints.find_one(
        {"_id": f"epochs|{topic}"})}
