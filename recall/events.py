"""`esrec recall events`: the user-events topic -> MongoDB user state, in a consumer group.

    poll (<= 500 records) -> validate each (UserEvent) -> bad ones to the dead-letter topic
    with the reason -> apply the good ones (idempotent by event id) -> commit offsets

Offsets are committed only after the batch's state updates and dead letters are
acknowledged, so a crash replays (harmless: replays are skipped), never skips.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass

from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import ValidationError
from pymongo.errors import PyMongoError

from esrec.clients import kafka_options
from esrec.retry import Backoff, retry
from esrec.settings import Settings
from recall.state import UserEvent, UserStates, problems

log = logging.getLogger("esrec.recall.events")
POLL_MS = 200
MAX_RECORDS = 500


HEALTHY_WITHIN_S = 30.0  # a poll loop that has not turned for this long is unhealthy


@dataclass
class EventCounts:
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0


class EventMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter("esrec_user_events", "User events by outcome", ["outcome"],
                              registry=self.registry)
        self.apply_seconds = Histogram("esrec_user_events_apply_seconds",
                                       "MongoDB user-state update per batch",
                                       registry=self.registry)


def parse(value: bytes | None) -> UserEvent:
    """One record's value as an event; ValueError with a plain reason otherwise."""
    if value is None:
        raise ValueError("empty record (no value)")
    try:
        return UserEvent.model_validate_json(value)
    except ValidationError as error:
        raise ValueError(problems(error, whole="event")) from None


class EventConsumer:
    def __init__(self, settings: Settings, states: UserStates, stop: threading.Event) -> None:
        self.settings = settings
        self.states = states
        self.stop = stop
        self.counts = EventCounts()
        self.metrics = EventMetrics()
        self.last_turn = time.monotonic()
        self.backoff = Backoff(max_s=settings.indexer.retry_max_delay_s)

    def run(self) -> None:
        """Consume until ``stop`` is set."""
        kafka = self.settings.kafka
        consumer = KafkaConsumer(kafka.topics.user_events, **kafka_options(kafka),
                                 group_id=self.settings.recall.consumer_group,
                                 enable_auto_commit=False, auto_offset_reset="earliest")
        producer = KafkaProducer(**kafka_options(kafka), acks="all")
        log.info("consuming user events", extra={"topic": kafka.topics.user_events,
                                                 "group": self.settings.recall.consumer_group})
        try:
            while not self.stop.is_set():
                self.last_turn = time.monotonic()
                batches = consumer.poll(POLL_MS, max_records=MAX_RECORDS)
                records = [record for batch in batches.values() for record in batch]
                if records:
                    self._handle(records, producer)
                    retry(consumer.commit, what="commit offsets", backoff=self.backoff,
                          stop=self.stop, retry_on=(KafkaError,))
        finally:
            consumer.close()
            producer.close()

    def _handle(self, records: list[ConsumerRecord], producer: KafkaProducer) -> None:
        events = []
        for record in records:
            try:
                events.append(parse(record.value))
            except ValueError as error:
                self._reject(producer, record, str(error))
        producer.flush()
        started = time.perf_counter()
        applied = retry(lambda: self.states.apply(events), what="apply user events",
                        backoff=self.backoff, stop=self.stop, retry_on=(PyMongoError,))
        self.metrics.apply_seconds.observe(time.perf_counter() - started)
        self.counts.applied += applied
        self.counts.duplicates += len(events) - applied
        self.metrics.events.labels("applied").inc(applied)
        self.metrics.events.labels("duplicate").inc(len(events) - applied)

    def health(self) -> tuple[bool, dict[str, object]]:
        age = time.monotonic() - self.last_turn
        return age < HEALTHY_WITHIN_S, {"status": "ok" if age < HEALTHY_WITHIN_S else "stalled",
                                        "seconds_since_last_poll": round(age, 3),
                                        **self.counts.__dict__}

    def _reject(self, producer: KafkaProducer, record: ConsumerRecord, reason: str) -> None:
        self.counts.rejected += 1
        self.metrics.events.labels("rejected").inc()
        log.warning("rejected a user event", extra={"reason": reason, "offset": record.offset})
        producer.send(self.settings.kafka.topics.dead_letters, value=json.dumps({
            "source_topic": record.topic, "partition": record.partition,
            "offset": record.offset, "reason": reason,
            "value": None if record.value is None else record.value.decode("utf-8", "replace"),
        }).encode())
