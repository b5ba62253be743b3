"""Bad user events against the real `esrec recall events`: each gets a dead letter that
fits a Kafka message and says why, every valid event around it is applied, and the
consumer goes on; a dead-letter topic that refuses writes never blocks valid events."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from esrec.ports import free_port
from esrec.settings import Settings
from recall.events import EXCERPT_CHARS
from runtime.clients import mongo_client
from runtime.ids import RULE
from tests.indexer.helpers import cli_env
from tests.processes import EsrecProcess, get_json, metric

T = TypeVar("T")

ITEMS = [{"_id": "i-int-tags", "title": "x", "tags": 5},
         {"_id": "i-nul-tag", "title": "x", "tags": ["ok", "bad\x00tag", ""]},
         {"_id": "i-fine", "title": "x", "tags": ["a", "b"]}]


def _event(item: str = "i-fine", **override: Any) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "user_id": "u-corpus", "item_id": item,
            "type": "click", "ts": "2026-11-01T12:00:00+00:00", **override}


def _json(event: dict[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False).encode()


# (record value, what the dead letter's reason must say)
BAD: list[tuple[bytes | None, str]] = [
    (None, "empty record"),
    (b"", "Invalid JSON"),
    (b"not json", "Invalid JSON"),
    (b'{"event_id": "e1"', "Invalid JSON"),
    (b"[1, 2, 3]", "event: Input should be an object"),
    (_json({"user_id": "u1"}), "event_id: Field required"),
    (_json(_event(type="teleport")), "type: Input should be"),
    (_json(_event(ts="yesterday")), "ts: Input should be a valid datetime"),
    (_json(_event(ts="2026-11-01T12:00:00")), "ts: Input should have timezone info"),
    (_json(_event(user_id="u\n1")), f"user_id: Value error, {RULE}"),
    (_json(_event(item_id="i" * 600)), f"item_id: Value error, {RULE}"),
    (_json(_event(extra="field")), "extra: Extra inputs are not permitted"),
    (b'{"event_id": "\\ud800", "user_id": "u", "item_id": "i", "type": "click", '
     b'"ts": "2026-11-01T12:00:00Z"}', "Invalid JSON"),  # a lone surrogate
    (b'{"event_id": "e", "user_id": "u", "item_id": "i", "type": "click", "ts": NaN}',
     "ts: Input should be a valid datetime"),
    (b"[" * 10_000 + b"]" * 10_000, "recursion limit"),  # nesting to break a parser
    # 500 KB of non-ASCII: its value escaped into a JSON dead letter would pass 1 MB
    (_json(_event(event_id="\u00e9" * 250_000)), f"event_id: Value error, {RULE}"),
    (b"\xff\xfe\x00garbage", "Invalid JSON"),
]


@pytest.fixture
def topics(settings: Settings) -> Iterator[Settings]:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    kafka = settings.kafka.topics
    admin.create_topics([NewTopic(kafka.user_events, 2, 1), NewTopic(kafka.dead_letters, 1, 1)])
    admin.close()
    db = mongo_client(settings.mongo)[settings.mongo.database]
    db[settings.mongo.collections.items].insert_many(ITEMS)
    yield settings


def _send(settings: Settings, values: list[bytes | None]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    for value in values:  # one at a time, in order: each record its own request
        producer.send(settings.kafka.topics.user_events, key=b"u-corpus", value=value).get(10)
    producer.close()


def _recent(settings: Settings, user: str) -> list[dict[str, Any]]:
    state = mongo_client(settings.mongo)[settings.mongo.database][
        settings.mongo.collections.user_state].find_one({"_id": user}) or {}
    return list(state.get("recent", []))


def _wait_applied(settings: Settings, user: str, count: int, consumer: EsrecProcess) -> None:
    deadline = time.monotonic() + 60
    while len(_recent(settings, user)) < count:
        assert consumer.alive(), consumer.text()[-3000:]
        assert time.monotonic() < deadline, (len(_recent(settings, user)), consumer.text())
        time.sleep(0.2)


def _settled(read: Callable[[], T], done: Callable[[T], bool]) -> T:
    """A count read once it is reached (or after 30 s): a batch's dead letters are sent
    and counted after its user state is written, which is what the tests wait on, so the
    counts may trail that state by a moment."""
    deadline = time.monotonic() + 30
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.2)
        value = read()
    return value


def test_bad_events_get_bounded_dead_letters_and_valid_ones_apply(
        topics: Settings, tmp_path: Path) -> None:
    settings = topics
    port = free_port()
    env = cli_env(settings, ESREC_RECALL__EVENTS_METRICS_PORT=str(port))
    consumer = EsrecProcess(env, tmp_path / "events.log", "recall", "events").start()
    try:
        consumer.wait_for("consuming user events")
        values: list[bytes | None] = []
        for n, (bad, _) in enumerate(BAD):  # each bad one between two valid ones
            values += [_json(_event("i-fine", ts=f"2026-11-01T12:{n:02d}:00Z")), bad,
                       _json(_event("i-int-tags" if n % 2 else "i-nul-tag",
                                    ts=f"2026-11-01T12:{n:02d}:30Z"))]
        _send(settings, values)
        _wait_applied(settings, "u-corpus", 2 * len(BAD), consumer)
        health = _settled(lambda: get_json(f"http://127.0.0.1:{port}/healthz"),
                          lambda got: got[1].get("rejected", 0) >= len(BAD))
    finally:
        consumer.stop()
    assert health[0] == 200 and health[1]["rejected"] == len(BAD), health
    assert "Traceback" not in consumer.text()
    recent = _recent(settings, "u-corpus")
    tags = {entry["item_id"]: entry["tags"] for entry in recent}
    assert tags == {"i-fine": ["a", "b"], "i-int-tags": [], "i-nul-tag": ["ok"]}
    letters = _dead_letters(settings, len(BAD))
    for (value, reason), letter in zip(BAD, letters, strict=True):
        assert reason in letter["reason"], (reason, letter["reason"])
        assert letter["value_bytes"] == len(value or b"")
        assert letter["value"] is None or len(letter["value"]) <= EXCERPT_CHARS
    assert max(len(json.dumps(letter)) for letter in letters) < 64 * 1024


def _dead_letters(settings: Settings, count: int) -> list[dict[str, Any]]:
    reader = KafkaConsumer(settings.kafka.topics.dead_letters,
                           bootstrap_servers=settings.kafka.bootstrap_servers,
                           auto_offset_reset="earliest", consumer_timeout_ms=15_000)
    letters = []
    for record in reader:
        letters.append(json.loads(record.value))
        if len(letters) == count:
            break
    reader.close()
    assert len(letters) == count
    return sorted(letters, key=lambda letter: letter["offset"])


def test_a_dead_letter_topic_that_refuses_writes_never_blocks_valid_events(
        topics: Settings, tmp_path: Path) -> None:
    settings = topics
    port = free_port()
    env = cli_env(settings, ESREC_RECALL__EVENTS_METRICS_PORT=str(port),
                  ESREC_KAFKA__TOPICS__DEAD_LETTERS="__consumer_offsets")  # no producer may
    consumer = EsrecProcess(env, tmp_path / "events.log", "recall", "events").start()
    try:
        consumer.wait_for("consuming user events")
        _send(settings, [_json(_event()), b"not json", _json(_event(ts="2026-11-01T13:00Z"))])
        _wait_applied(settings, "u-corpus", 2, consumer)
        failures = _settled(lambda: metric(port, "esrec_user_events_dead_letter_failures_total"),
                            lambda value: value is not None and value >= 1)
    finally:
        consumer.stop()
    assert failures == 1.0
    assert "could not send a dead letter" in consumer.text()
    assert "Traceback" not in consumer.text()
