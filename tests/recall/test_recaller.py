"""Recall end to end on real wire protocols: catalog indexed, events through Kafka, fused
candidates with provenance, seen items excluded, a broken channel degrading the answer."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from esrec.settings import Settings
from indexer.lifecycle import Versions
from recall.channels import Channel, Context
from recall.events import EventConsumer
from recall.recaller import STAGES, Recaller
from tests.indexer.helpers import CATALOG, services
from towers.dataset import Collections, write_mongo
from towers.synth import generate

pytestmark = pytest.mark.slow
V1 = "test-model@1"


@pytest.fixture
def recall_settings(settings: Settings) -> Settings:
    # the synthetic catalog was created in 2025: a wide "hot" window keeps that channel busy
    return settings.model_copy(update={"recall": settings.recall.model_copy(
        update={"hot_window_days": 3650.0, "alias_ttl_s": 0.2})})


@pytest.fixture
def recaller(recall_settings: Settings, es: Elasticsearch, artifact_dir: Path) -> Recaller:
    svc = services(recall_settings, es, artifact_dir)
    write_mongo(generate(CATALOG), svc.db, Collections())
    versions = Versions(svc)
    assert versions.build(V1).done
    versions.promote(V1)
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


class BrokenChannel(Channel):
    """Asks Elasticsearch something it refuses (sorting on a text field)."""

    name = "hot"

    def searches(self, ctx: Context) -> list[dict[str, Any]]:
        return [self._body(query=ctx.filter(), sort=[{"title": "desc"}])]


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
    assert consumer.counts.applied == 4
    healthy, detail = consumer.health.ready()
    assert healthy and detail["rejected"] == 1
    assert consumer.metrics.events.labels("applied")._value.get() == 4
    dead = KafkaConsumer(settings.kafka.topics.dead_letters,
                         bootstrap_servers=settings.kafka.bootstrap_servers,
                         auto_offset_reset="earliest", consumer_timeout_ms=10_000)
    letter = json.loads(next(iter(dead)).value)
    dead.close()
    assert "event_id: Field required" in letter["reason"]
    assert "type: Input should be" in letter["reason"]
