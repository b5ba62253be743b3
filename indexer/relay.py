"""The relay: the change stream -> the item-changes topic, for N indexer workers.

    standby: try the lease every ttl/3 (one relay leads; /healthz says which)
    leader:  resume at the lease's position -> poll a batch -> the lease still held (a
             fenced renewal, unless a save within half its TTL showed it) -> send the
             changes as one pack per partition (indexer/messages.py), acks=all -> flush
             -> every send acknowledged -> save the position under the epoch (fenced,
             extending the lease), with a mark (watermark + offsets produced) at most
             once a second: what the workers' indices' progress is read from
             (``TopicOffsets.progress``). A lost lease stops publishing at once; the
             position saved last is where the next leader resumes, so nothing is skipped.

The relay embeds nothing and writes nothing to Elasticsearch: it only orders and ships
changes with their external versions. A first relay starts at the oldest position of
the active indices (where an embedded daemon left off), or at the server's time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from bson.timestamp import Timestamp
from kafka import KafkaProducer
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Gauge
from pymongo.errors import ConnectionFailure, PyMongoError

from indexer.changes import Batch, Change, Position
from indexer.checkpoint import lag_seconds
from indexer.daemon import ServerClock
from indexer.lease import Fenced, Lease
from indexer.messages import encode_pack, partition_of
from indexer.settings import IndexerConfig
from indexer.source import ChangeStreamSource, server_time
from runtime.clients import MongoCollection, ensure_topic, kafka_options, topic_offsets
from runtime.health import Health
from runtime.retry import Backoff, retry
from towers.relations import Relation

log = logging.getLogger("esrec.relay")
SEND_TIMEOUT_S = 30.0


class RelayMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.published = Counter("esrec_relay_published", "Changes sent to the topic",
                                 registry=r)
        self.leader = Gauge("esrec_relay_leader", "1 while this relay holds the lease",
                            registry=r)
        self.epoch = Gauge("esrec_relay_lease_epoch", "The lease epoch this relay holds "
                           "(0: standby)", registry=r)
        self.fenced = Counter("esrec_relay_fenced", "Times this relay found its lease "
                              "taken over (its sends and saves refused)", registry=r)
        self.retries = Counter("esrec_relay_retries", "Transient failures retried",
                               ["stage"], registry=r)
        self.lag = Gauge("esrec_relay_lag_seconds", "How far the topic is behind the "
                         "newest change in MongoDB (server clock; 0 while caught up)",
                         registry=r)


class Relay:
    def __init__(self, settings: IndexerConfig, items: MongoCollection, lease: Lease,
                 first_position: Callable[[], Position | None], stop: threading.Event,
                 health: Health, metrics: RelayMetrics | None = None,
                 relations: Callable[[], list[Relation]] = list) -> None:
        self.settings = settings
        self.items = items
        self.relations = relations  # what the active versions join items with
        self.lease = lease
        self.first_position = first_position  # the active indices' oldest position
        self.stop = stop
        self.health = health
        self.metrics = metrics or RelayMetrics()
        self.backoff = Backoff(max_s=settings.indexer.retry_max_delay_s)
        self.clock = ServerClock()
        self.watermark: Timestamp | None = None
        self.idle = False
        self.topic = settings.kafka.topics.item_changes
        self.produced: dict[int, int] = {}  # partition -> next offset, acknowledged
        self.metrics.lag.set_function(lambda: self.lag_s() or 0.0)
        health.detail = self.detail

    def lag_s(self) -> float | None:
        now = self.clock.now()
        if now is None or self.lease.epoch is None:
            return None
        return lag_seconds(self.watermark, self.idle, now)

    def detail(self) -> dict[str, object]:
        return {"role": "leader" if self.lease.epoch is not None else "standby",
                "epoch": self.lease.epoch, "lag_s": self.lag_s()}

    def run(self) -> None:
        """Lead or stand by until ``stop`` is set."""
        producer = self._producer()
        if producer is None:
            return  # stopped while waiting for Kafka
        try:
            while not self.stop.is_set():
                self.health.turned()
                if not self._try_lease():
                    self.stop.wait(self.settings.indexer.lease_ttl_s / 3)
                    continue
                try:
                    self._lead(producer)
                except Fenced as error:
                    self.metrics.fenced.inc()
                    log.error("lease lost: this relay stops publishing", extra={
                        "error": str(error)})
                self._standby()
        finally:
            self.lease.release()
            producer.close(timeout=SEND_TIMEOUT_S)
            log.info("relay stopped")

    def _producer(self) -> KafkaProducer | None:
        kafka, indexer = self.settings.kafka, self.settings.indexer

        def connect() -> KafkaProducer:
            ensure_topic(kafka, self.topic, indexer.partitions)
            return KafkaProducer(**kafka_options(kafka), acks="all", retries=5,
                                 max_in_flight_requests_per_connection=1, linger_ms=5,
                                 batch_size=256 * 1024,
                                 max_request_size=indexer.max_message_bytes + 64 * 1024)

        try:
            return retry(connect, what="kafka", backoff=self.backoff, stop=self.stop,
                         retry_on=(KafkaError,), health=self.health)
        except KafkaError:
            return None

    def _try_lease(self) -> bool:
        try:
            held = self.lease.acquire()
        except PyMongoError as error:
            self.health.retrying("mongodb", error)
            return False
        self.health.recovered("mongodb")
        if held:
            log.info("relay leads", extra={"epoch": self.lease.epoch})
            self.metrics.leader.set(1)
            self.metrics.epoch.set(self.lease.epoch or 0)
        return held

    def _standby(self) -> None:
        self.metrics.leader.set(0)
        self.metrics.epoch.set(0)

    def _lead(self, producer: KafkaProducer) -> None:
        self.clock.observe(server_time(self.items))
        self.produced = retry(self._topic_ends, what="kafka", backoff=self.backoff,
                              stop=self.stop, retry_on=(KafkaError,), health=self.health)
        position = self.lease.position() or self.first_position() or Position(
            None, server_time(self.items), 0)
        log.info("relay starting", extra={"from": position.cluster_time,
                                          "epoch": self.lease.epoch})
        relations = self.relations()
        source = self._stream(position, relations)
        indexer = self.settings.indexer
        follow_s = self.settings.rollout.follow_interval_s
        next_follow = time.monotonic() + follow_s
        try:
            while not self.stop.is_set():
                self.health.turned()
                if time.monotonic() >= next_follow:  # a version joining other collections
                    next_follow = time.monotonic() + follow_s
                    if set(wanted := self.relations()) != set(relations):
                        log.info("related collections changed; restarting the stream")
                        source.close()
                        relations = wanted
                        source = self._stream(self.lease.position() or position,
                                              relations)
                try:
                    batch = source.poll(indexer.batch_max_docs, indexer.batch_max_bytes,
                                        indexer.batch_max_wait_ms / 1000)
                except ConnectionFailure as error:
                    self.metrics.retries.labels("mongo").inc()
                    self.health.retrying("mongodb", error)
                    self.stop.wait(self.backoff.delay(2))
                    source.close()
                    source = self._stream(self.lease.position() or position, relations)
                    continue
                if batch.position is None:
                    continue
                if batch.changes:
                    self.lease.renew()  # fenced: a relay that lost its lease sends nothing
                    self._publish(producer, batch.changes)
                self._save(batch)
        finally:
            source.close()

    def _stream(self, position: Position, relations: list[Relation]) -> ChangeStreamSource:
        """The change stream from ``position``; documents stay raw BSON (only shipped)."""
        return ChangeStreamSource(self.items, position, relations=relations,
                                  decode_documents=False)

    def _topic_ends(self) -> dict[int, int]:
        """Where the topic ends as this relay takes the lead: what earlier leaders
        produced, so its first marks cover their changes too."""
        return topic_offsets(self.settings.kafka, self.topic)

    def _publish(self, producer: KafkaProducer, changes: list[Change]) -> None:
        """Send the changes as one pack per partition (or a few, each under the message
        limit) and wait until each is acknowledged (acks=all)."""
        epoch, limit = self.lease.epoch or 0, self.settings.indexer.max_message_bytes

        def send_all() -> None:
            partitions = sorted(producer.partitions_for(self.topic))
            shares: dict[int, list[Change]] = {}
            for change in changes:
                shares.setdefault(partitions[partition_of(change.doc_id, len(partitions))],
                                  []).append(change)
            futures = [producer.send(self.topic, value=pack.value, partition=partition,
                                     timestamp_ms=pack.timestamp_ms)
                       for partition, share in shares.items()
                       for pack in encode_pack(share, epoch, limit)]
            producer.flush(timeout=SEND_TIMEOUT_S)
            for future in futures:
                sent = future.get(timeout=SEND_TIMEOUT_S)  # raises the send's error
                self.produced[sent.partition] = max(self.produced.get(sent.partition, 0),
                                                    sent.offset + 1)

        retry(send_all, what="kafka", backoff=self.backoff, stop=self.stop,
              retry_on=(KafkaError,), health=self.health,
              on_retry=lambda _: self.metrics.retries.labels("send").inc())
        self.metrics.published.inc(len(changes))

    def _save(self, batch: Batch) -> None:
        position = batch.position
        assert isinstance(position, Position)
        retry(lambda: self.lease.save(position, batch.watermark, batch.idle, self.produced),
              what="mongodb", backoff=self.backoff, stop=self.stop,
              retry_on=(ConnectionFailure,), health=self.health,
              on_retry=lambda _: self.metrics.retries.labels("checkpoint").inc())
        self.health.recovered("mongodb")
        self.idle = batch.idle
        if batch.watermark is not None:
            self.watermark = batch.watermark
            if batch.idle:
                self.clock.observe(batch.watermark)

