"""Dead-letter redrive of user events: events MongoDB refused (a user state broken by
someone else) are applied once the state is repaired; a letter whose copy was cut is
redriven from the original record; one that still fails is parked anew; redriven letters
leave the list."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from pymongo import MongoClient
from pymongo.database import Database

from esrec.settings import Settings
from recall.events import EventConsumer
from tests.indexer.helpers import cli_env

pytestmark = pytest.mark.slow


def _event(n: int, user: str = "u-broken") -> bytes:
    return json.dumps({"event_id": f"e{n}", "user_id": user, "item_id": f"i{n}",
                       "type": "click", "ts": datetime.now(UTC).isoformat()}).encode()


@pytest.fixture
def db(settings: Settings, mongo_client: MongoClient) -> Database:
    return mongo_client[settings.mongo.database]


@pytest.fixture
def consumer(settings: Settings, db: Database) -> Iterator[EventConsumer]:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    admin.create_topics([NewTopic(name, 1, 1) for name in (
        settings.kafka.topics.user_events, settings.kafka.topics.dead_letters)])
    admin.close()
    stop = threading.Event()
    consumer = EventConsumer(settings, db, stop)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    yield consumer
    stop.set()
    thread.join(30)


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "esrec", "recall", "dead-letters", *args],
                          capture_output=True, text=True, env=cli_env(settings), timeout=300)


def test_refused_events_are_applied_after_the_fix(settings: Settings, db: Database,
                                                  consumer: EventConsumer) -> None:
    states = db[settings.mongo.collections.user_state]
    states.insert_one({"_id": "u-broken", "recent": "written by another tool"})
    long_bad = json.dumps({"event_id": "x", "user_id": "u1", "item_id": "i1",
                           "type": "teleport", "ts": "2026-01-01T00:00:00Z",
                           "note": "y" * 6000}).encode()  # invalid, and cut in its letter
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    for value in [_event(n) for n in range(3)] + [long_bad, _event(9, "u-fine")]:
        producer.send(settings.kafka.topics.user_events, value=value)
    producer.flush()
    producer.close()
    deadline = time.monotonic() + 30
    while consumer.counts.rejected < 4 or consumer.counts.applied < 1:
        assert time.monotonic() < deadline, consumer.counts
        time.sleep(0.2)

    listed = _cli(settings, "list")
    assert listed.returncode == 0, listed.stderr
    letters = [json.loads(line) for line in listed.stdout.splitlines()]
    assert len(letters) == 4
    assert sum("MongoDB refused the update" in letter["reason"] for letter in letters) == 3
    assert [letter["truncated"] for letter in letters].count(True) == 1
    shown = _cli(settings, "show", letters[0]["letter"])
    assert json.loads(shown.stdout)["letter"]["source_topic"] == \
        settings.kafka.topics.user_events

    states.delete_one({"_id": "u-broken"})  # the fix: the broken state is removed
    redriven = _cli(settings, "redrive")
    assert redriven.returncode == 0, redriven.stderr
    report = json.loads(redriven.stdout)
    assert report == {"letters": 4, "redriven": 4, "parked_again": 1, "unrecoverable": []}
    state = states.find_one({"_id": "u-broken"})
    assert state is not None
    assert sorted(entry["item_id"] for entry in state["recent"]) == ["i0", "i1", "i2"]
    left = [json.loads(line) for line in _cli(settings, "list").stdout.splitlines()]
    assert len(left) == 1 and "type: Input should be" in left[0]["reason"]  # parked anew
    assert left[0]["truncated"] is True  # redriven from the original 6 KB record
    assert json.loads(_cli(settings, "redrive", "--reason", "MongoDB").stdout)[
        "letters"] == 0
