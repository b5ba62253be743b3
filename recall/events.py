"""`esrec recall events`: the user-events topic -> MongoDB user state, in a consumer group.

    poll (<= 500 records) -> validate each (UserEvent) -> apply the good ones (idempotent
    by event id) -> the newly applied ones into the items' measured popularity, over
    everyone and in the acting user's cluster of each version with clusters, and into a
    running canary's clicks when they name the version that answered -> bad
    ones, and updates MongoDB refuses for good, to the dead-letter topic with the reason
    -> commit offsets

Offsets are committed only after the batch's state updates are acknowledged, so a crash
replays (harmless: replays are skipped), never skips. Measured popularity is folded in
memory and written every ``popularity_flush_s`` (and at a clean stop): a crash loses at
most that long's counts, never user state. A dead letter always fits a Kafka
message (the payload is cut to an excerpt, with its size and sha256), and a dead letter
that cannot be sent is logged and counted, never a reason to stop: the record stays in
the source topic at the offset the log names. Kafka or MongoDB down, at start or later,
is waited out; /healthz says what is being retried.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    KafkaError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from pydantic import ValidationError
from pymongo.errors import PyMongoError

from indexer.canary_store import CanaryStore
from recall.canary import ClickCounter
from recall.clusters import ClusterTracker
from recall.metrics import EventMetrics
from recall.popularity import ClusterPopularity, Popularity
from recall.settings import RecallConfig
from recall.state import UserEvent, UserStates, problems
from runtime.clients import MongoDatabase, group_consumer, kafka_options
from runtime.health import Health
from runtime.retry import Backoff, retry
from towers.registry import ModelRegistry

log = logging.getLogger("esrec.recall.events")
POLL_MS = 200
MAX_RECORDS = 500
EXCERPT_CHARS = 4096  # of a bad record's value in its dead letter: ~24 KB escaped at most
REASON_CHARS = 1000
DEAD_LETTER_TIMEOUT_S = 10.0
LAG_EVERY_S = 5.0  # consumer lag (end offsets) is read this often
# the group gave this consumer's partitions away while it held a batch (a server outage
# outlasted max_poll_interval_ms): that commit can never succeed, only the next poll
# rejoins, and the batch comes again (applying an event twice changes nothing)
REBALANCED = (CommitFailedError, RebalanceInProgressError, IllegalGenerationError,
              UnknownMemberIdError)


@dataclass
class EventCounts:
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0  # to the dead-letter topic (malformed, or refused by MongoDB)


def parse(value: bytes | None) -> UserEvent:
    """One record's value as an event; ValueError with a plain reason otherwise."""
    if value is None:
        raise ValueError("empty record (no value)")
    try:
        return UserEvent.model_validate_json(value)
    except ValidationError as error:
        raise ValueError(problems(error, whole="event")) from None


class Record(Protocol):
    """What the consumer reads of a Kafka record (a ConsumerRecord, or a redriven one)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def value(self) -> bytes | None: ...


def dead_letter(record: Record, reason: str) -> bytes:
    """The dead letter of a record: where it was, why, and a bounded excerpt of it."""
    value: bytes = record.value or b""
    text = value.decode("utf-8", "replace")
    return json.dumps({
        "source_topic": record.topic, "partition": record.partition, "offset": record.offset,
        "reason": reason[:REASON_CHARS], "value_bytes": len(value),
        "value_sha256": hashlib.sha256(value).hexdigest(),
        "value": None if record.value is None else text[:EXCERPT_CHARS],
        "truncated": len(text) > EXCERPT_CHARS,
    }).encode()


class EventConsumer:
    def __init__(self, settings: RecallConfig, db: MongoDatabase, stop: threading.Event,
                 health: Health | None = None) -> None:
        self.settings = settings
        self.states = UserStates(db, settings)
        flush_s = settings.recall.popularity_flush_s
        self.popularity = Popularity(db, settings, flush_s)
        names = settings.mongo.collections
        self.cluster_popularity = ClusterPopularity(db, settings, flush_s)
        self.clusters = ClusterTracker(ModelRegistry(db, names.models), self.states,
                                       self.cluster_popularity)
        self.clicks = ClickCounter(CanaryStore(db, settings))
        self.stop = stop
        self.metrics = EventMetrics()
        self.backoff = Backoff(max_s=settings.recall.retry_max_delay_s)
        self.health = health or Health(
            stalled_after_s=max(30.0, 2 * settings.recall.retry_max_delay_s))
        self.health.detail = self.health_detail
        self.counts = EventCounts()
        self.next_lag = 0.0

    def _commit(self, consumer: KafkaConsumer) -> None:
        try:
            consumer.commit()
        except REBALANCED as error:
            self.metrics.rebalanced.inc()
            log.warning("the group rebalanced before this batch was committed: it comes "
                        "again from the last commit", extra={"error": str(error)})

    def _connect(self) -> tuple[KafkaConsumer, KafkaProducer]:
        kafka = self.settings.kafka
        consumer = group_consumer(kafka, [kafka.topics.user_events],
                                  self.settings.recall.consumer_group,
                                  enable_auto_commit=False, auto_offset_reset="earliest")
        try:
            producer = KafkaProducer(**kafka_options(kafka), acks="all",
                                     max_block_ms=int(DEAD_LETTER_TIMEOUT_S * 1000))
        except KafkaError:
            consumer.close()
            raise
        return consumer, producer

    def run(self) -> None:
        """Consume until ``stop`` is set (waiting for Kafka if it is not up yet)."""
        try:
            consumer, producer = retry(self._connect, what="kafka", backoff=self.backoff,
                                       stop=self.stop, retry_on=(KafkaError,),
                                       health=self.health)
        except KafkaError:
            return  # stopped while waiting
        kafka = self.settings.kafka
        log.info("consuming user events", extra={"topic": kafka.topics.user_events,
                                                 "group": self.settings.recall.consumer_group})
        try:
            while not self.stop.is_set():
                self.health.turned()
                batches = consumer.poll(POLL_MS, max_records=MAX_RECORDS)
                records = [record for batch in batches.values() for record in batch]
                if records:
                    self.handle(records, producer)
                    retry(functools.partial(self._commit, consumer), what="kafka commit",
                          backoff=self.backoff, stop=self.stop, retry_on=(KafkaError,),
                          health=self.health)
                self.flush_counts(due=True)  # also while idle: nothing waits for a batch
                self._measure_lag(consumer)
            self.flush_counts()  # stopping: what was folded since the last write
        finally:
            consumer.close()
            producer.close()

    def handle(self, records: Sequence[Record], producer: KafkaProducer) -> int:
        """Apply a batch of records; returns how many went to the dead-letter topic."""
        events, origin, rejected = [], [], []
        for record in records:
            try:
                events.append(parse(record.value))
                origin.append(record)
            except ValueError as error:
                rejected.append((record, str(error)))
        started = time.perf_counter()
        applied = retry(lambda: self.states.apply(events), what="mongodb",
                        backoff=self.backoff, stop=self.stop, retry_on=(PyMongoError,),
                        health=self.health)
        self.popularity.count(applied.new)  # in memory: written by flush_counts
        for count in (self.clusters.count, self.clicks.count):
            retry(functools.partial(count, applied.new), what="mongodb",
                  backoff=self.backoff, stop=self.stop, retry_on=(PyMongoError,),
                  health=self.health)
        self.metrics.apply_seconds.observe(time.perf_counter() - started)
        by_event = {id(event): record for event, record in zip(events, origin, strict=True)}
        rejected += [(by_event[id(event)], reason) for event, reason in applied.refused]
        self._reject(producer, rejected)
        self.counts.applied += applied.applied
        self.counts.duplicates += applied.duplicates
        self.metrics.events.labels("applied").inc(applied.applied)
        self.metrics.events.labels("duplicate").inc(applied.duplicates)
        return len(rejected)

    def flush_counts(self, due: bool = False) -> None:
        """Write the popularity folded since the last write (``due``: only if its time
        came); a failed write keeps the folds for the retry, never counting twice."""
        for counts in (self.popularity, self.cluster_popularity):
            retry(counts.flush_due if due else counts.flush, what="mongodb",
                  backoff=self.backoff, stop=self.stop, retry_on=(PyMongoError,),
                  health=self.health)

    def _reject(self, producer: KafkaProducer, rejected: list[tuple[Record, str]]
                ) -> None:
        """Send every dead letter; one that cannot be sent is logged with its coordinates."""
        topic = self.settings.kafka.topics.dead_letters
        sent: list[tuple[Record, Any]] = []
        for record, reason in rejected:
            self.counts.rejected += 1
            self.metrics.events.labels("rejected").inc()
            log.warning("rejected a user event", extra={
                "reason": reason[:REASON_CHARS], "partition": record.partition,
                "offset": record.offset})
            try:
                sent.append((record, producer.send(topic, value=dead_letter(record, reason))))
            except (KafkaError, ValueError) as error:  # refused by the client before sending
                self._lost(record, error)
        if sent:
            try:
                producer.flush(timeout=DEAD_LETTER_TIMEOUT_S)
            except KafkaError as error:
                log.warning("dead letters not flushed", extra={"error": repr(error)})
        for record, future in sent:
            if not future.is_done or future.failed():
                self._lost(record, future.exception if future.is_done else "timed out")

    def _lost(self, record: Record, error: object) -> None:
        self.metrics.dead_letter_failures.inc()
        log.error("could not send a dead letter; the record stays in its topic", extra={
            "topic": record.topic, "partition": record.partition, "offset": record.offset,
            "error": repr(error)[:300]})

    def _measure_lag(self, consumer: KafkaConsumer) -> None:
        """Records behind the end of the assigned partitions, every LAG_EVERY_S."""
        if time.monotonic() < self.next_lag:
            return
        self.next_lag = time.monotonic() + LAG_EVERY_S
        assigned: set[TopicPartition] = consumer.assignment()
        if not assigned:
            return
        try:
            ends = consumer.end_offsets(list(assigned))
            self.metrics.lag.set(sum(max(0, ends[tp] - consumer.position(tp))
                                     for tp in assigned))
        except KafkaError as error:
            log.debug("consumer lag unknown", extra={"error": repr(error)})

    def health_detail(self) -> dict[str, object]:
        return asdict(self.counts)
