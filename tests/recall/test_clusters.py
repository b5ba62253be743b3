"""User clusters end to end: planted groups found, a user whose behaviour moves follows to
the other group's cluster within seconds of the events (through Kafka), a refresh moves
the centroids without a retrain, and two versions' clusters never meet.

Users act on catalog items the test model never saw by id (ids >= 600), so their vectors
come from the items' tags: three topics, three planted groups.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from elasticsearch import Elasticsearch
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from esrec.settings import Settings
from indexer.lifecycle import Versions
from indexer.service import Services
from recall.clusters import build, refresh_clusters, user_vectors
from recall.events import EventConsumer
from recall.popularity import ClusterPopularity
from recall.recaller import Recaller
from recall.state import UserEvent, UserStates
from tests.indexer.helpers import CATALOG, cli_env, services
from towers.clusters import ClusterSet
from towers.dataset import Collections, write_mongo
from towers.synth import generate

pytestmark = pytest.mark.slow
V1, V2 = "test-model@1", "test-model@2"
TOPICS = ("cat2", "cat5", "cat8")  # group g acts on TOPICS[g]
PER_GROUP = 20
START = datetime.now(UTC) - timedelta(days=2)
_ids = itertools.count()


@pytest.fixture
def world(settings: Settings, es: Elasticsearch, artifact_dir: Path,
          v2_dir: Path) -> Iterator[tuple[Services, UserStates, dict[str, list[str]]]]:
    fast = settings.model_copy(update={"recall": settings.recall.model_copy(
        update={"alias_ttl_s": 0.1, "popularity_ttl_s": 0.1})})
    svc = services(fast, es, artifact_dir)
    svc.registry.publish(v2_dir)
    dataset = generate(CATALOG)
    write_mongo(dataset, svc.db, Collections())
    versions = Versions(svc)
    assert versions.build(V1).done
    versions.promote(V1)
    topics = {topic: [str(item["_id"]) for item in dataset.items
                      if item["category"] == topic and int(str(item["_id"])[1:]) >= 600]
              for topic in (*TOPICS, "cat9")}
    states = UserStates(svc.db, fast)
    for group, topic in enumerate(TOPICS):
        for user in range(PER_GROUP):
            states.apply(_events(f"g{group}-{user}", topics[topic][user % 7::7][:10]))
    yield svc, states, topics


def _events(user: str, items: list[str], after: timedelta = timedelta(0)) -> list[UserEvent]:
    return [UserEvent(event_id=f"e{next(_ids)}", user_id=user, item_id=item, type="click",
                      ts=START + after + timedelta(minutes=n)) for n, item in enumerate(items)]


def _send(settings: Settings, events: list[UserEvent]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    for event in events:
        producer.send(settings.kafka.topics.user_events, key=event.user_id.encode(),
                      value=event.model_dump_json().encode())
    producer.flush()
    producer.close()


@pytest.fixture
def consumer(world: tuple[Services, UserStates, dict[str, list[str]]]
             ) -> Iterator[EventConsumer]:
    svc = world[0]
    admin = KafkaAdminClient(bootstrap_servers=svc.settings.kafka.bootstrap_servers)
    admin.create_topics([NewTopic(name, 2, 1) for name in (
        svc.settings.kafka.topics.user_events, svc.settings.kafka.topics.dead_letters)])
    admin.close()
    stop = threading.Event()
    consumer = EventConsumer(svc.settings, svc.db, stop)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    yield consumer
    stop.set()
    thread.join(30)


def _build(svc: Services, states: UserStates, ref: str) -> ClusterSet:
    return build(svc.registry, states, ClusterPopularity(svc.db, svc.settings), ref, k=3)


def _group_clusters(svc: Services, states: UserStates, ref: str) -> list[int]:
    """Each planted group's cluster under ``ref``: the one most of its users are in."""
    clusters = svc.registry.clusters(ref)
    assert clusters is not None
    artifact = svc.registry.pull(ref)
    found = []
    for group in range(len(TOPICS)):
        documents = states.documents([f"g{group}-{user}" for user in range(PER_GROUP)])
        labels = clusters[0].assign(artifact.embed_users(list(documents.values())))
        counts = np.bincount(labels, minlength=clusters[0].k)
        assert counts.max() >= 0.9 * PER_GROUP, (group, counts)  # the group stays together
        found.append(int(counts.argmax()))
    return found


def test_build_finds_the_planted_groups_and_stores_a_generation(world) -> None:
    svc, states, topics = world
    built = _build(svc, states, V1)
    assert built.generation == 1 and built.users == 3 * PER_GROUP
    assert len(set(_group_clusters(svc, states, V1))) == 3  # one cluster per group
    # each cluster starts with its users' recent events: group 0 clicked only TOPICS[0]
    recaller = Recaller(svc.es, svc.db, svc.registry, svc.settings)
    response = recaller.recall({"user_id": "g0-0", "k": 10, "channels": {"cluster": 1.0}})
    served = [candidate.item_id for candidate in response.candidates]
    assert served and set(served) <= set(topics[TOPICS[0]])
    assert not set(served) & set(states.read("g0-0").seen)
    again = _build(svc, states, V1)
    assert (again.generation, again.lineage) == (2, f"{V1}#g2")  # a new lineage


def test_a_user_who_moves_follows_into_the_other_cluster_within_seconds(
        world, consumer: EventConsumer) -> None:
    svc, states, topics = world
    _build(svc, states, V1)
    home, away = _group_clusters(svc, states, V1)[:2]
    recaller = Recaller(svc.es, svc.db, svc.registry, svc.settings)
    states.apply(_events("mover", topics[TOPICS[0]][1:9]))
    assert recaller.recall({"user_id": "mover", "k": 10}).cluster == home
    # group 1 keeps acting (counted in its cluster), then the mover turns to its topic
    crowd = [event for user in range(PER_GROUP) for event in _events(
        f"g1-{user}", topics[TOPICS[1]][:5], after=timedelta(hours=1))]
    moved = _events("mover", topics[TOPICS[1]][20:32], after=timedelta(hours=2))
    _send(svc.settings, crowd + moved)
    sent = time.monotonic()
    while (response := recaller.recall({"user_id": "mover", "k": 20,
                                         "channels": {"cluster": 1.0}})).cluster != away:
        assert time.monotonic() - sent < 15, f"still in cluster {response.cluster}"
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    while consumer.counts.applied < len(crowd) + len(moved):
        assert time.monotonic() < deadline, consumer.counts
        time.sleep(0.1)
    # the crowd's 20 clicks on each of 5 items outweigh the few each stored event gives
    # (the cluster's counts are re-read every 0.1 s in the background)
    while {c.item_id for c in response.candidates[:5]} != set(topics[TOPICS[1]][:5]):
        assert time.monotonic() < deadline, [c.item_id for c in response.candidates]
        time.sleep(0.1)
        response = recaller.recall({"user_id": "mover", "k": 20, "channels": {"cluster": 1.0}})
    assert {c.item_id for c in response.candidates} <= set(topics[TOPICS[1]])
    assert all(source.cluster == away for candidate in response.candidates
               for source in candidate.sources)
    assert response.stages_ms["cluster"] >= 0


def test_refresh_moves_centroids_toward_new_behaviour_without_a_retrain(world) -> None:
    svc, states, topics = world
    built = _build(svc, states, V1)
    group = _group_clusters(svc, states, V1)[0]
    time.sleep(0.05)  # the users below act after the generation was made
    for user in range(PER_GROUP):  # group 0 drifts toward another topic
        states.apply(_events(f"g0-{user}", topics["cat9"][user % 5::5][:6],
                             after=timedelta(hours=3)))
    artifact = svc.registry.pull(V1)
    made_at = svc.registry.clusters(V1)[1]  # type: ignore[index]
    drifted = user_vectors(states, artifact, made_at)[1].mean(axis=0)
    refreshed = refresh_clusters(svc.registry, states, V1)
    assert refreshed.generation == 2 and refreshed.users == PER_GROUP
    assert refreshed.moved["clusters_moved"] == 1 and refreshed.moved["max"] > 0
    before = np.linalg.norm(built.centroids[group] - drifted)
    after = np.linalg.norm(refreshed.centroids[group] - drifted)
    assert after < before
    others = [c for c in range(3) if c != group]
    assert np.array_equal(refreshed.centroids[others], built.centroids[others])
    assert svc.registry.get(V1).sha256 == artifact.sha256  # the same towers: no retrain
    recaller = Recaller(svc.es, svc.db, svc.registry, svc.settings)
    deadline = time.monotonic() + 5
    while (serving := recaller.resolver.current()).clusters.generation != 2:  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert serving.clusters is not None and serving.clusters.sha256 == refreshed.sha256


def test_clusters_of_two_versions_never_meet_through_promotes(
        world, consumer: EventConsumer) -> None:
    """v1 (32 dims) and v2 (16 dims) each with clusters: through promote / rollback
    cycles every answer's cluster comes from the answering version's centroids and its
    items from that version's counts (a mix would fail outright on the dims)."""
    svc, states, topics = world
    versions = Versions(svc)
    assert versions.build(V2).done
    for ref in (V1, V2):
        _build(svc, states, ref)
    crowd = [event for group, topic in enumerate(TOPICS) for user in range(PER_GROUP)
             for event in _events(f"g{group}-{user}", topics[topic][:4],
                                  after=timedelta(hours=1))]
    _send(svc.settings, crowd)
    counts = svc.db[svc.settings.mongo.collections.cluster_popularity]
    deadline = time.monotonic() + 120  # 240 events: 5 applied in 30 s on a loaded machine
    while consumer.counts.applied < len(crowd):
        assert time.monotonic() < deadline, consumer.counts
        time.sleep(0.2)
    allowed: dict[tuple[str, int], set[str]] = {}
    for doc in counts.find():
        allowed.setdefault((doc["lineage"].split("#")[0], doc["cluster"]), set()).add(
            doc["item"])
    assert {model for model, _ in allowed} == {V1, V2}
    recaller = Recaller(svc.es, svc.db, svc.registry, svc.settings)
    failures: list[str] = []
    answered: dict[str, int] = {V1: 0, V2: 0}
    halt = threading.Event()

    def ask() -> None:
        while not halt.is_set():
            try:
                response = recaller.recall({"user_id": "g2-3", "k": 10,
                                            "channels": {"cluster": 1.0, "knn": 1.0}})
                items = {c.item_id for c in response.candidates
                         if any(s.channel == "cluster" for s in c.sources)}
                if not items or not items <= allowed[(response.model, response.cluster)]:
                    failures.append(f"{response.model} cluster {response.cluster}: {items}")
                answered[response.model] += 1
            except Exception as error:
                failures.append(repr(error))

    threads = [threading.Thread(target=ask, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(3):
            for ref in (V2, V1):  # each serves a few answers before the next switch (a
                versions.promote(ref)  # loaded machine takes seconds to load a version)
                wanted, deadline = answered[ref] + 3, time.monotonic() + 60
                while answered[ref] < wanted and not failures:
                    assert time.monotonic() < deadline, (ref, answered)
                    time.sleep(0.05)
    finally:
        halt.set()
        for thread in threads:
            thread.join(30)
    assert failures == []
    assert answered[V1] >= 9 and answered[V2] >= 9


def test_mlt_finds_items_like_the_newest_ones_and_never_them(world) -> None:
    svc, states, _ = world
    recaller = Recaller(svc.es, svc.db, svc.registry, svc.settings)
    response = recaller.recall({"user_id": "g1-0", "k": 30, "channels": {"mlt": 1.0}})
    assert response.candidates and not response.degraded
    seen = set(states.read("g1-0").seen)
    served = [candidate.item_id for candidate in response.candidates]
    assert not set(served) & seen
    categories = {str(d["_id"]): d["category"] for d in states.items.find(
        {"_id": {"$in": served}})}
    assert sum(categories[item] == TOPICS[1] for item in served) > 0.8 * len(served)
    assert json.loads(response.model_dump_json())["candidates"][0]["sources"][0][
        "channel"] == "mlt"


@pytest.mark.long  # long: build and refresh are tested in process above; this is their CLI
def test_the_cli_builds_and_refreshes_and_refuses_more_clusters_than_users(world) -> None:
    """`esrec recall clusters build|refresh` as a user runs them."""
    svc, states, topics = world

    def esrec(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "esrec", "recall", "clusters", *args],
                              env=cli_env(svc.settings), capture_output=True, text=True,
                              timeout=300)

    built = esrec("build", V1, "--k", "3")
    assert built.returncode == 0, built.stderr[-2000:]
    report = json.loads(built.stdout)
    assert (report["k"], report["users"], report["generation"]) == (3, 3 * PER_GROUP, 1)
    assert f"{3 * PER_GROUP} users read" in built.stderr  # progress on stderr
    states.apply(_events("g0-0", topics[TOPICS[1]][:10], after=timedelta(hours=1)))
    refreshed = esrec("refresh", V1)
    assert refreshed.returncode == 0, refreshed.stderr[-2000:]
    assert json.loads(refreshed.stdout)["generation"] == 2
    too_many = esrec("build", V1, "--k", "1000")
    assert too_many.returncode == 1, too_many.stderr
    assert too_many.stderr.splitlines()[-2:] == [
        f"esrec: {3 * PER_GROUP} users with state cannot make 1000 clusters",
        "  what to do: lower --k, or build once users have acted"]
