"""Recall end to end on real wire protocols: catalog indexed, events through Kafka, fused
candidates with provenance, seen items excluded, a broken channel degrading the answer."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bson.timestamp import Timestamp
from elasticsearch import Elasticsearch
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from esrec.settings import Settings
from indexer.changes import Change
from indexer.layout import VECTOR
from indexer.lifecycle import Versions
from indexer.versioning import external_version
from recall.channels import Channel, Context
from recall.events import EventConsumer
from recall.popularity import Popularity
from recall.recaller import STAGES, Recaller
from recall.replay import replay
from recall.state import UserEvent, UserStates
from tests.indexer.helpers import CATALOG, cli_env, services
from towers.dataset import Collections, Dataset, Interaction, leave_last_out, write_mongo
from towers.synth import generate

pytestmark = pytest.mark.slow
V1 = "test-model@1"


@pytest.fixture
def recall_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"recall": settings.recall.model_copy(
        update={"alias_ttl_s": 0.2, "popularity_ttl_s": 0.2})})


def _events(user: str, items: list[str], start: datetime, step_s: float = 60.0
            ) -> list[UserEvent]:
    return [UserEvent(event_id=f"{user}-{n}-{item}", user_id=user, item_id=item, type="click",
                      ts=start + timedelta(seconds=n * step_s)) for n, item in enumerate(items)]


@pytest.fixture
def recaller(recall_settings: Settings, es: Elasticsearch, artifact_dir: Path) -> Recaller:
    svc = services(recall_settings, es, artifact_dir)
    dataset = generate(CATALOG)
    write_mongo(dataset, svc.db, Collections())
    versions = Versions(svc)
    assert versions.build(V1).done
    versions.promote(V1)
    # an old log's events (2016): measured popularity is relative to the newest event
    popular = [str(item["_id"]) for item in dataset.items[:40]]
    Popularity(svc.db, recall_settings).count(_events(
        "crowd", [item for n, item in enumerate(popular) for _ in range(40 - n)],
        datetime(2016, 5, 1, tzinfo=UTC), step_s=1.0))
    return Recaller(es, svc.db, svc.registry, recall_settings)


def _channels(response: Any) -> set[str]:
    return {source.channel for candidate in response.candidates for source in candidate.sources}


def test_cold_start_user_gets_a_mix_without_knn(recaller: Recaller) -> None:
    response = recaller.recall({"user_id": "nobody", "k": 30})
    assert response.cold_start and not response.degraded
    assert response.model == V1 and response.index.endswith("-g1")
    assert _channels(response) == {"hot", "fresh"}
    assert len(response.candidates) == 30
    assert len({c.item_id for c in response.candidates}) == 30  # deduplicated


def test_hot_is_measured_popularity_of_an_old_log(recaller: Recaller) -> None:
    """The fixture's 2016 events: item n of the 40 got 40 - n events."""
    order = {str(item["_id"]): n for n, item in enumerate(generate(CATALOG).items)}
    response = recaller.recall({"user_id": "nobody", "k": 10, "channels": {"hot": 1.0}})
    assert [order[c.item_id] for c in response.candidates] == list(range(10))


def test_every_seen_item_is_excluded_past_history_and_query_bounds(
        recaller: Recaller) -> None:
    """70 items seen (history_len is 50), only 5 of them in the query's must_not: the
    other 65 are over-fetched for and filtered out; still k candidates, none seen."""
    settings = recaller.settings.model_copy(update={"recall": recaller.settings.recall.model_copy(
        update={"seen_in_query": 5})})
    db = recaller.states.items.database
    recaller = Recaller(recaller.es, db, recaller.resolver.registry, settings)
    items = [str(d["_id"]) for d in recaller.states.items.find({"category": "cat2"}).limit(70)]
    UserStates(db, settings).apply(_events("heavy", items, datetime.now(UTC) - timedelta(days=1)))
    view = recaller.states.read("heavy")
    assert len(view.document["recent_items"]) == 50 and set(view.seen) == set(items)
    for channels in ({"knn": 1.0}, None):
        response = recaller.recall({"user_id": "heavy", "k": 60, "channels": channels})
        served = {c.item_id for c in response.candidates}
        assert len(served) == 60 and not served & set(items), channels


def test_session_items_drive_knn_i2i_and_are_excluded(recaller: Recaller) -> None:
    items = recaller.states.items
    seeds = [d["_id"] for d in items.find({"category": "cat3"}).limit(3)]
    response = recaller.recall({"user_id": "nobody", "k": 50, "recent_items": seeds})
    assert not response.cold_start
    assert {"knn", "i2i"} <= _channels(response)
    returned = {c.item_id for c in response.candidates}
    assert not returned & set(seeds)
    i2i = [c for c in response.candidates if any(s.channel == "i2i" for s in c.sources)]
    assert list(response.stages_ms) == list(STAGES)  # where the time went, every stage
    assert sum(response.stages_ms.values()) == pytest.approx(response.took_ms, abs=0.01)
    categories = {d["_id"]: d["category"] for d in items.find({"_id": {"$in": [
        c.item_id for c in i2i]}})}
    assert sum(categories[c.item_id] == "cat3" for c in i2i) > len(i2i) / 2
    # Elasticsearch cut the seeds' neighbours at i2i_min_similarity (knn "similarity")
    vectors = {doc["_id"]: np.asarray(doc["_source"][VECTOR]) for doc in recaller.es.mget(
        index=response.index, ids=seeds + [c.item_id for c in i2i],
        source_includes=[VECTOR])["docs"]}
    closest = [max(float(vectors[c.item_id] @ vectors[seed]) for seed in seeds) for c in i2i]
    assert min(closest) >= recaller.settings.recall.i2i_min_similarity - 1e-4
    # the same seeds again: their vectors were kept (recall.seeds), no mget this time
    def seeds_by(source: str) -> float:
        return recaller.metrics.registry.get_sample_value(
            "esrec_recall_i2i_seeds_total", {"source": source}) or 0.0

    before = {source: seeds_by(source) for source in ("kept", "looked_up")}
    again = recaller.recall({"user_id": "nobody", "k": 50, "recent_items": seeds})
    assert seeds_by("looked_up") == before["looked_up"]
    assert seeds_by("kept") == before["kept"] + len(seeds)
    assert {c.item_id for c in again.candidates if any(s.channel == "i2i" for s in c.sources)
            } == {c.item_id for c in i2i}


class BrokenChannel(Channel):
    """Asks Elasticsearch something it refuses (sorting on a text field)."""

    name = "hot"

    def searches(self, ctx: Context) -> list[dict[str, Any]]:
        return [self._body(ctx, query=ctx.filter(), sort=[{"title": "desc"}])]


def test_a_failing_channel_degrades_instead_of_failing(recaller: Recaller) -> None:
    recaller.channels["hot"] = BrokenChannel(recaller.channels["hot"].settings,
                                             recaller.settings.recall)
    response = recaller.recall({"user_id": "nobody", "k": 20})
    assert response.degraded and set(response.reasons) == {"hot"}
    assert "exception" in response.reasons["hot"]
    assert _channels(response) == {"fresh"} and len(response.candidates) == 20
    assert recaller.metrics.degraded.labels("hot", "error")._value.get() == 1


def _topics(settings: Settings) -> None:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    admin.create_topics([NewTopic(name, 2, 1) for name in (
        settings.kafka.topics.user_events, settings.kafka.topics.dead_letters)])
    admin.close()


@pytest.fixture
def consumer(recaller: Recaller) -> Iterator[EventConsumer]:
    settings = recaller.settings
    _topics(settings)
    stop = threading.Event()
    consumer = EventConsumer(settings, recaller.states.items.database, stop)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    yield consumer
    stop.set()
    thread.join(30)


def _event(user: str, item: str, minutes_ago: float) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "user_id": user, "item_id": item, "type": "click",
            "ts": (datetime.now(UTC) - timedelta(minutes=minutes_ago)).isoformat()}


def test_events_through_kafka_reach_recall_within_seconds(recaller: Recaller,
                                                          consumer: EventConsumer) -> None:
    settings = recaller.settings
    items = recaller.states.items
    clicked = [d["_id"] for d in items.find({"category": "cat7"}).limit(4)]
    before = recaller.recall({"user_id": "u1", "k": 20})
    events = [_event("u1", item, 10 - i) for i, item in enumerate(clicked)]
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    # the clock measures an event's way to recall, not the consumer joining its group
    # (which took the whole 10 s on a loaded machine): one event of another user first
    other = (items.find_one({"category": {"$ne": "cat7"}}) or {})["_id"]  # no cat7 bias
    producer.send(settings.kafka.topics.user_events, key=b"u0",
                  value=json.dumps(_event("u0", other, 20)).encode())
    producer.flush()
    deadline = time.monotonic() + 60
    while consumer.counts.applied < 1:
        assert time.monotonic() < deadline, "the consumer applied nothing in 60 s"
        time.sleep(0.1)
    sent_at = time.monotonic()
    for event in [*events, events[0]]:  # the last one is a replay
        producer.send(settings.kafka.topics.user_events, key=b"u1",
                      value=json.dumps(event).encode())
    producer.send(settings.kafka.topics.user_events, value=b'{"user_id": "u1", "type": "x"}')
    producer.flush()
    producer.close()

    while True:
        after = recaller.recall({"user_id": "u1", "k": 20})
        if {"i2i", "tags"} <= _channels(after):
            break
        assert time.monotonic() - sent_at < 10, "recall did not reflect the events in 10s"
        time.sleep(0.2)
    assert not {c.item_id for c in after.candidates} & set(clicked)  # seen: excluded
    state = recaller.states.states.find_one({"_id": "u1"})
    assert [r["item_id"] for r in state["recent"]][:4] == clicked[::-1]  # newest first
    assert before.candidates != after.candidates
    cats = {d["_id"]: d["category"] for d in items.find({"_id": {"$in": [
        c.item_id for c in before.candidates + after.candidates]}})}
    share = [sum(cats[c.item_id] == "cat7" for c in r.candidates) for r in (before, after)]
    assert share[1] > share[0]

    deadline = time.monotonic() + 10
    while consumer.counts.rejected < 1 or consumer.counts.duplicates < 1:
        assert time.monotonic() < deadline, consumer.counts
        time.sleep(0.1)
    assert consumer.counts.applied == 1 + 4  # u0's, then u1's four (the replay is not)
    healthy, detail = consumer.health.ready()
    assert healthy and detail["rejected"] == 1
    assert consumer.metrics.events.labels("applied")._value.get() == 1 + 4
    dead = KafkaConsumer(settings.kafka.topics.dead_letters,
                         bootstrap_servers=settings.kafka.bootstrap_servers,
                         auto_offset_reset="earliest", consumer_timeout_ms=10_000)
    letter = json.loads(next(iter(dead)).value)
    dead.close()
    assert "event_id: Field required" in letter["reason"]
    assert "type: Input should be" in letter["reason"]


def test_train_and_serve_build_the_same_user_document(recaller: Recaller,
                                                      consumer: EventConsumer) -> None:
    """The same events, once through leave_last_out (training) and once through Kafka ->
    `recall events` -> user state -> read (serving), give the same user document field by
    field: longer than history_len, with same-second events."""
    settings = recaller.settings
    dataset = generate(CATALOG)
    items = [str(item["_id"]) for item in dataset.items]
    users = [str(user["_id"]) for user in dataset.users[:4]]
    start = datetime(2026, 3, 1, tzinfo=UTC).timestamp()
    log = [Interaction(user, items[(7 * u + 3 * n) % len(items)],
                       start + u * 1000 + (n // 3))  # three events per second
           for u, user in enumerate(users) for n in range(65)]
    split = leave_last_out(Dataset(dataset.items, dataset.users, log),
                           settings.recall.history_len, validation=False)
    held = {(c.user["_id"], c.target, c.ts) for c in split.cases}
    sent = replay(settings, [i for i in log if (i.user_id, i.item_id, i.ts) not in held])
    deadline = time.monotonic() + 60
    while consumer.counts.applied < sent:
        assert time.monotonic() < deadline, consumer.counts
        time.sleep(0.2)
    for case in split.cases:
        served = recaller.states.read(str(case.user["_id"])).document
        assert set(served) == set(case.user)
        for name, value in case.user.items():
            assert _comparable(served[name]) == _comparable(value), name
        assert len(served["recent_items"]) == settings.recall.history_len


def _comparable(value: Any) -> Any:
    """Dates as MongoDB keeps them (BSON datetimes, milliseconds) or as files do (ISO
    strings), alike."""
    if isinstance(value, str) and value[:4].isdigit() and "T" in value:
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.replace(microsecond=aware.microsecond // 1000 * 1000).timestamp()
    return value


def test_an_id_with_a_space_or_non_ascii_letters_goes_from_catalog_to_recall(
        recaller: Recaller, consumer: EventConsumer, es: Elasticsearch,
        artifact_dir: Path) -> None:
    """One id rule for every stage (runtime.ids): what the indexer indexes, an event may
    name, recall may be asked about and returns."""
    settings = recaller.settings
    svc = services(settings, es, artifact_dir)
    odd = ["red shoe 42", "Žluťoučký kůň", "東京タワー"]
    now = datetime.now(UTC)
    documents = [{"_id": item, "title": item, "category": "cat2", "tags": ["x"],
                  "created_at": now.isoformat()} for item in odd]
    svc.items.insert_many(documents)
    cluster_time = Timestamp(int(time.time()), 1)
    svc.pipeline(svc.active_targets()).process([
        Change("upsert", d["_id"], external_version(cluster_time, n), cluster_time, d)
        for n, d in enumerate(documents)])
    es.indices.refresh(index=svc.active_targets()[0].index)

    fresh = recaller.recall({"user_id": "nobody", "k": 5, "channels": {"fresh": 1.0}})
    assert set(odd) <= {c.item_id for c in fresh.candidates}

    user = "usér ünïcode"
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    for n, item in enumerate(odd):
        producer.send(settings.kafka.topics.user_events, key=user.encode(),
                      value=json.dumps(_event(user, item, 5 - n)).encode())
    producer.flush()
    producer.close()
    deadline = time.monotonic() + 15
    while consumer.counts.applied < len(odd):
        assert time.monotonic() < deadline, consumer.counts
        time.sleep(0.1)
    assert consumer.counts.rejected == 0
    state = recaller.states.states.find_one({"_id": user})
    assert [r["item_id"] for r in state["recent"]] == odd[::-1]
    response = recaller.recall({"user_id": user, "k": 30, "recent_items": [odd[0]]})
    assert not response.cold_start and response.candidates
    assert not {c.item_id for c in response.candidates} & set(odd)  # seen: excluded


@pytest.mark.long  # long: three cold CLI processes for one default
def test_the_cli_query_defaults_to_the_settings_k(recaller: Recaller) -> None:
    """`esrec recall query` asks for recall.default_k unless --k says otherwise: one default."""
    def query(*args: str, **env: str) -> int:
        run = subprocess.run([sys.executable, "-m", "esrec", "recall", "query", "nobody",
                              "--json", *args], env=cli_env(recaller.settings, **env),
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        return len(json.loads(run.stdout)["candidates"])

    in_process = len(recaller.recall({"user_id": "nobody"}).candidates)
    assert query() == in_process > 20  # 20 was the CLI's own default
    assert query(ESREC_RECALL__DEFAULT_K="7") == 7
    assert query("--k", "5") == 5
