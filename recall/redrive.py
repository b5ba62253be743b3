"""User-event dead letters: list them, and redrive them after a fix.

    list     every letter on the dead-letter topic that was not redriven yet, selected by
             time (``since``) and reason (a substring)
    redrive  each selected letter's event through the consumer's own path again (the
             letter's copy; the original record from the source topic when the copy was
             cut); one that fails again goes to the dead-letter topic anew, with
             today's reason. Every letter taken is remembered in MongoDB as redriven
             (topic, partition, offset), so it leaves the list.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from recall.events import DEAD_LETTER_TIMEOUT_S, EventConsumer
from recall.settings import RecallConfig
from runtime.clients import MongoDatabase, kafka_options
from runtime.errors import Unavailable

READ_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class Letter:
    """A dead letter as the topic holds it, and where it is."""

    partition: int
    offset: int
    at: datetime  # when it was parked (the record's timestamp)
    body: dict[str, Any]  # source_topic, partition, offset, reason, value, truncated...

    @property
    def key(self) -> str:
        return f"{self.partition}:{self.offset}"

    def summary(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "letter": self.key,
                "source": f"{self.body.get('source_topic')}/{self.body.get('partition')}/"
                          f"{self.body.get('offset')}",
                "reason": self.body.get("reason"), "truncated": self.body.get("truncated")}


@dataclass(frozen=True)
class _Redriven:
    """A letter's event, presented to the consumer as the record it came from."""

    topic: str
    partition: int
    offset: int
    value: bytes | None


@dataclass
class EventRedriveReport:
    letters: int = 0  # selected
    redriven: int = 0  # handed to the consumer's path
    parked_again: int = 0  # failed again: on the dead-letter topic anew
    unrecoverable: list[str] = field(default_factory=list)  # cut, original gone

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class EventDeadLetters:
    def __init__(self, settings: RecallConfig, db: MongoDatabase) -> None:
        self.settings = settings
        self.db = db
        self.topic = settings.kafka.topics.dead_letters
        self.redriven = db[settings.mongo.collections.redriven_event_letters]

    def _read(self, topic: str) -> Iterator[tuple[int, int, int, bytes | None]]:
        """(partition, offset, timestamp ms, value) of a whole topic, up to its end now."""
        consumer = KafkaConsumer(**kafka_options(self.settings.kafka), enable_auto_commit=False,
                                 consumer_timeout_ms=READ_TIMEOUT_MS)
        try:
            found = consumer.partitions_for_topic(topic) or set()
            assigned = [TopicPartition(topic, p) for p in sorted(found)]
            if not assigned:
                return
            consumer.assign(assigned)
            consumer.seek_to_beginning(*assigned)
            ends = consumer.end_offsets(assigned)
            remaining = {tp for tp in assigned if consumer.position(tp) < ends[tp]}
            while remaining:
                batches = consumer.poll(500)
                if not batches and all(consumer.position(tp) >= ends[tp] for tp in remaining):
                    break
                for tp, records in batches.items():
                    for record in records:
                        if record.offset < ends[tp]:
                            yield tp.partition, record.offset, record.timestamp, record.value
                    if consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
        except KafkaError as error:
            raise Unavailable(f"cannot read {topic}: {error!r}") from None
        finally:
            consumer.close()

    def pending(self, since: datetime | None = None,
                reason: str | None = None) -> list[Letter]:
        """The letters not redriven yet, oldest first, selected by time and reason."""
        done = {doc["_id"] for doc in self.redriven.find({}, {"_id": 1})}
        letters = []
        for partition, offset, timestamp, value in self._read(self.topic):
            if f"{partition}:{offset}" in done:
                continue
            at = datetime.fromtimestamp(timestamp / 1000, UTC)
            try:
                body = json.loads(value or b"{}")
            except ValueError:
                body = {"reason": "not a dead letter esrec wrote", "value": None}
            if (since is None or at >= since) and (
                    not reason or reason in str(body.get("reason", ""))):
                letters.append(Letter(partition, offset, at, body))
        return letters

    def redrive(self, since: datetime | None = None, reason: str | None = None,
                on_progress: Callable[[int], None] | None = None) -> EventRedriveReport:
        """Redrive the selected letters (see the module)."""
        letters = self.pending(since, reason)
        report = EventRedriveReport(letters=len(letters))
        if not letters:
            return report
        consumer = EventConsumer(self.settings, self.db, threading.Event())
        producer = KafkaProducer(**kafka_options(self.settings.kafka), acks="all",
                                 max_block_ms=int(DEAD_LETTER_TIMEOUT_S * 1000))
        try:
            records, taken = [], []
            for letter in letters:
                record = self._record(letter)
                if record is None:
                    report.unrecoverable.append(letter.key)
                    continue
                records.append(record)
                taken.append(letter)
            for start in range(0, len(records), 500):
                report.parked_again += consumer.handle(records[start:start + 500], producer)
                report.redriven += len(records[start:start + 500])
                if on_progress is not None:
                    on_progress(report.redriven)
            consumer.flush_counts()
            now = datetime.now(UTC)
            if taken:
                self.redriven.insert_many([{"_id": letter.key, "at": now} for letter in taken])
        finally:
            producer.close()
        return report

    def _record(self, letter: Letter) -> _Redriven | None:
        body = letter.body
        source = str(body.get("source_topic") or self.settings.kafka.topics.user_events)
        partition, offset = int(body.get("partition", -1)), int(body.get("offset", -1))
        if not body.get("truncated"):
            value = body.get("value")
            return _Redriven(source, partition, offset,
                             None if value is None else str(value).encode())
        original = self._original(source, partition, offset)
        return None if original is None else _Redriven(source, partition, offset, original)

    def _original(self, topic: str, partition: int, offset: int) -> bytes | None:
        """The record at (partition, offset) of ``topic``; None once retention took it."""
        consumer = KafkaConsumer(**kafka_options(self.settings.kafka), enable_auto_commit=False,
                                 consumer_timeout_ms=READ_TIMEOUT_MS)
        try:
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, offset)
            for record in consumer:
                return record.value if record.offset == offset else None
            return None
        except KafkaError:
            return None
        finally:
            consumer.close()
