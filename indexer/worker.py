"""An indexer worker: its share of the item-changes topic (and of backfill chunks) through
the one pipeline, in a Kafka consumer group.

    poll -> drop changes from a fenced relay epoch -> read referenced documents by id
         -> Pipeline.prepare (every active version) -> Writers (commit, then save) ->
    save: each index's offsets per partition in MongoDB ($max, never backwards), chunk
          completions -> the consumer thread commits the same offsets to Kafka

Kafka's group protocol gives each worker its partitions; where each index stands is
kept per (index, partition) in MongoDB, like the daemon's per-index checkpoints, so a
worker that gains a partition, or sees a new model version start building, seeks every
partition to the oldest position of its targets and the other indices drop the replay
as stale (409). A partition revoked mid-run is drained and saved first. An offset that
fell off the topic (retention shorter than an outage) is a lost history: stop, or with
the resync policy rebuild every target and go on.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from prometheus_client import Counter, Gauge
from pymongo.errors import DuplicateKeyError, PyMongoError

from indexer.changes import Change, id_problem
from indexer.daemon import Resync
from indexer.follower import Follower
from indexer.messages import decode_change, decode_chunk
from indexer.offsets import TopicOffsets
from indexer.pipeline import Pipeline, Prepared, Target
from indexer.settings import IndexerConfig
from indexer.source import HistoryLost
from indexer.versioning import external_version
from indexer.writers import Writers
from runtime.clients import ensure_topic, kafka_options
from runtime.health import Health
from runtime.retry import Backoff, retry

if TYPE_CHECKING:  # the wiring builds workers: only its type is needed here
    from indexer.service import Services

log = logging.getLogger("esrec.worker")
LAG_EVERY_S = 5.0
METADATA_EVERY_MS = 15_000  # partitions added to a topic reach the group within this


class WorkerMetrics:
    def __init__(self, services: Services) -> None:
        r = services.metrics.registry  # beside the pipeline's own metrics
        self.partitions = Gauge("esrec_worker_partitions", "Item-changes partitions owned",
                                registry=r)
        self.lag = Gauge("esrec_worker_lag", "Messages behind in the owned partitions",
                         registry=r)
        self.fenced = Counter("esrec_worker_fenced_messages", "Changes dropped: sent by a "
                              "relay whose lease had been taken over", registry=r)
        self.chunks = Counter("esrec_worker_backfill_chunks", "Backfill chunks written",
                              registry=r)
        self.rejoins = Counter("esrec_worker_rejoins", "Group joins retried after an "
                               "assignment the Kafka client could not decode", registry=r)


@dataclass
class Done:
    """What a batch lets the worker save once it is written (strictly in order)."""

    indices: list[str] = field(default_factory=list)  # the live targets it was written to
    offsets: dict[TopicPartition, int] = field(default_factory=dict)  # next offsets
    epochs: dict[int, int] = field(default_factory=dict)  # relay epoch seen per partition
    chunk: tuple[str, int] | None = None  # (index, chunk number) it completes


class Worker(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, services: Services, targets: list[Target], follower: Follower | None,
                 health: Health, resync: Resync | None = None) -> None:
        self.services = services
        self.resync = resync  # None: a lost history stops the worker
        self.settings: IndexerConfig = services.settings
        self.pipeline = services.pipeline(targets)
        self.follower = follower
        self.health = health
        self.stop = services.stop
        self.metrics = WorkerMetrics(services)
        self.backoff = Backoff(max_s=self.settings.indexer.retry_max_delay_s)
        topics = self.settings.kafka.topics
        self.changes_topic, self.backfill_topic = topics.item_changes, topics.item_backfill
        self.offsets = TopicOffsets(services.checkpoints.collection, self.changes_topic)
        self.writers: Writers[tuple[Prepared | None, Done]] = self._writers()
        self.consumer: KafkaConsumer | None = None
        self.epochs: dict[int, int] = {}  # partition -> highest relay epoch seen
        self.saved: dict[TopicPartition, int] = {}  # written and saved, to commit to Kafka
        self.lock = threading.Lock()  # self.saved, shared with the writer threads
        # the reader's batch hand-off and the rebalance callbacks (Kafka's IO thread) take
        # turns: a drain never races a submit into the writers it closes
        self.batches = threading.Lock()
        self.chunk_targets: dict[str, Target] = {}
        self.unpositioned: set[TopicPartition] = set()  # assigned, not yet sought
        self.expected: dict[TopicPartition, int] = {}  # the next offset each must have
        self.next_lag = 0.0
        health.detail = self.detail

    @property
    def indices(self) -> list[str]:
        return [target.index for target in self.pipeline.targets]

    def detail(self) -> dict[str, object]:
        owned = sorted(tp.partition for tp in self._owned())
        return {"targets": self.indices, "partitions": owned}

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        """Consume until ``stop`` is set (waiting for Kafka if it is not up yet)."""
        try:
            self.consumer = retry(self._connect, what="kafka", backoff=self.backoff,
                                  stop=self.stop, retry_on=(KafkaError,), health=self.health)
        except KafkaError:
            return
        log.info("worker consuming", extra={"topics": f"{self.changes_topic},"
                                                      f"{self.backfill_topic}",
                                            "targets": ",".join(self.indices)})
        try:
            while not self.stop.is_set():
                self.health.turned()
                self._follow()
                try:
                    polled = self.consumer.poll(
                        timeout_ms=self.settings.indexer.batch_max_wait_ms or 50,
                        max_records=self.settings.indexer.batch_max_docs)
                except struct.error as error:
                    # kafka-python cannot decode an empty SyncGroup assignment, which a
                    # coordinator may send mid-rebalance; the next poll joins again
                    log.warning("undecodable group assignment; rejoining",
                                extra={"error": repr(error)})
                    self.metrics.rejoins.inc()
                    continue
                positioned = self._position()  # fetched before the seek: read again
                polled = {tp: records for tp, records in polled.items()
                          if tp not in positioned}
                gap = self._gap(polled)
                if gap is not None:
                    self._history_lost(gap)
                    continue
                with self.batches:
                    self._handle(polled)
                self._commit()
                self._measure_lag()
        finally:
            try:
                with self.batches:
                    self.writers.close()  # drains: written batches get their offsets saved
                self._commit()
            finally:
                self.consumer.close()
            log.info("worker stopped")

    def _connect(self) -> KafkaConsumer:
        indexer = self.settings.indexer
        topics = [self.changes_topic, self.backfill_topic]
        for topic in topics:  # subscribed: they must exist
            ensure_topic(self.settings.kafka, topic, indexer.partitions)
        consumer = KafkaConsumer(**kafka_options(self.settings.kafka),
                                 metadata_max_age_ms=METADATA_EVERY_MS,
                                 group_id=indexer.worker_group, enable_auto_commit=False,
                                 # only before the loop seeks a new partition (it is paused
                                 # until then); a reset past a gap is caught by _gap
                                 auto_offset_reset="earliest",
                                 session_timeout_ms=indexer.worker_session_timeout_ms,
                                 heartbeat_interval_ms=indexer.worker_session_timeout_ms // 4,
                                 max_poll_interval_ms=indexer.worker_rebalance_timeout_ms,
                                 fetch_max_bytes=64 * 1024 * 1024,
                                 max_partition_fetch_bytes=indexer.max_message_bytes * 2)
        for topic in topics:
            # the group leader assigns only topics its metadata knows: a topic created a
            # moment ago may be missing from it, and its partitions would go to no one
            if not consumer.partitions_for_topic(topic):
                consumer.close()
                raise KafkaError(f"no partitions of {topic} in the metadata yet")
        consumer.subscribe(topics, listener=self)
        return consumer

    def _writers(self) -> Writers[tuple[Prepared | None, Done]]:
        def write(item: tuple[Prepared | None, Done]) -> None:
            if item[0] is not None:
                self.pipeline.commit(item[0])

        return Writers(write, lambda item: self._save(item[1]))

    # -- rebalancing and following ------------------------------------------------------

    # kafka-python runs these two on its IO thread, where no blocking consumer call may
    # run: revoke drains the writers (ES and MongoDB only) once the reader has handed off
    # its batch; a new assignment is paused here and positioned by the loop once poll()
    # returns (it needs offset lookups)

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Before a partition moves: finish what was read and save it, so its next owner
        starts where this one stopped (a replay would only cost 409s)."""
        with self.batches:
            self._drain()
            with self.lock:
                self.saved = {tp: offset for tp, offset in self.saved.items()
                              if tp not in revoked}
            self.unpositioned -= revoked
            for tp in revoked:
                self.expected.pop(tp, None)

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        assert self.consumer is not None
        self.consumer.pause(*assigned)
        with self.batches:
            self.unpositioned |= assigned
        self.metrics.partitions.set(len(self._owned()))  # local state: no broker call
        log.info("partitions assigned", extra={"partitions": ",".join(
            f"{tp.topic}:{tp.partition}" for tp in sorted(assigned))})

    def _position(self) -> set[TopicPartition]:
        """Seek newly assigned partitions (main thread), then let them be fetched; returns
        them. One assigned while this runs waits for the next turn of the loop."""
        assert self.consumer is not None
        owned: set[TopicPartition] = self.consumer.assignment()
        with self.batches:
            pending = self.unpositioned & owned
            self.unpositioned -= pending
        if not pending:
            return pending
        self._seek([tp for tp in pending if tp.topic == self.changes_topic])
        for tp in pending:  # chunks: where the group left off, or every chunk there is
            if tp.topic == self.backfill_topic and self.consumer.committed(tp) is None:
                self.consumer.seek_to_beginning(tp)
        self.consumer.resume(*pending)
        return pending

    def _owned(self) -> list[TopicPartition]:
        if self.consumer is None:
            return []
        return [tp for tp in self.consumer.assignment() if tp.topic == self.changes_topic]

    def _seek(self, partitions: list[TopicPartition]) -> None:
        """Each partition from the oldest saved position of the current targets."""
        assert self.consumer is not None
        for tp in partitions:
            starts = [self.offsets.start(index, tp.partition, self._initial_offsets)
                      for index in self.indices]
            if starts:
                self.consumer.seek(tp, min(starts))
                self.expected[tp] = min(starts)
            else:  # no version to write yet: a new one starts at its own offsets
                self.consumer.seek_to_end(tp)
                self.expected.pop(tp, None)
            self.epochs[tp.partition] = self.offsets.epoch(tp.partition)

    def _initial_offsets(self, index: str) -> dict[int, int]:
        """Where an index no worker wrote yet starts: the first message at or after the
        cluster time its stream position names (its backfill's T, or where a daemon
        left it); the whole topic if it names none."""
        assert self.consumer is not None
        partitions = [TopicPartition(self.changes_topic, p) for p in
                      self.consumer.partitions_for_topic(self.changes_topic) or ()]
        position = self.services.checkpoints.load(index)
        if position is None or position.cluster_time is None:
            starts = self.consumer.beginning_offsets(partitions)
            return {tp.partition: int(offset) for tp, offset in starts.items()}
        at = position.cluster_time.time * 1000
        found = self.consumer.offsets_for_times({tp: at for tp in partitions})
        ends = self.consumer.end_offsets(partitions)
        return {tp.partition: int(found[tp].offset if found.get(tp) else ends[tp])
                for tp in partitions}

    def _follow(self) -> None:
        if self.follower is None:
            return
        targets = self.follower.changed(self.pipeline.targets)
        if targets is None:
            return
        with self.batches:
            self._drain()
            before = set(self.indices)
            self.pipeline.targets = targets
        log.info("model versions changed", extra={
            "added": ",".join(sorted(set(self.indices) - before)) or "-",
            "removed": ",".join(sorted(before - set(self.indices))) or "-"})
        self._seek(self._owned())

    def _drain(self) -> None:
        """Finish every batch read so far (writes, then saves) before positions move."""
        self.writers.close()
        self.writers = self._writers()

    # -- batches -----------------------------------------------------------------------

    def _handle(self, polled: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        changes: list[Change] = []
        done = Done(indices=self.indices)
        fetch: list[int] = []  # positions in changes whose document is read by id
        for tp, records in polled.items():
            if tp.topic == self.backfill_topic:
                for record in records:
                    self._chunk(record, tp)
                continue
            for record in records:
                published = decode_change(record.value)
                epoch = self.epochs.get(tp.partition, 0)
                if published.epoch < epoch:
                    self.metrics.fenced.inc()
                    continue
                self.epochs[tp.partition] = done.epochs[tp.partition] = published.epoch
                if published.fetch:
                    fetch.append(len(changes))
                changes.append(published.change)
            done.offsets[tp] = records[-1].offset + 1
        if fetch:
            changes = self._fetched(changes, fetch)
        if changes or done.offsets:
            prepared = self.pipeline.prepare(changes) if changes and self.indices else None
            self.writers.submit((prepared, done))

    def _fetched(self, changes: list[Change], positions: list[int]) -> list[Change]:
        """Changes whose document was too big for a message, with the document read by id
        (gone since: skipped, the delete that removed it follows)."""
        ids = [changes[n].doc_id for n in positions]
        found = {repr(d["_id"]): d for d in self.services.items.find({"_id": {"$in": ids}})}
        kept = []
        for n, change in enumerate(changes):
            if n in positions:
                document = found.get(repr(change.doc_id))
                if document is None:
                    continue
                change = Change("upsert", change.doc_id, change.version, change.cluster_time,
                                document, change.problem)
            kept.append(change)
        return kept

    def _chunk(self, record: ConsumerRecord, tp: TopicPartition) -> None:
        """A backfill share: read its documents, write them at version (T, 0) into its
        one index, and mark it done once written."""
        chunk = decode_chunk(record.value)
        target = self.chunk_targets.get(chunk.index)
        if target is None:
            target = self.chunk_targets[chunk.index] = self.services.target(chunk.ref,
                                                                           chunk.index)
        version = external_version(chunk.operation_time, 0)
        documents = list(self.services.items.find({"_id": {"$in": chunk.ids}}))
        changes = [Change("upsert", d["_id"], version, chunk.operation_time, d,
                          id_problem(d["_id"])) for d in documents]
        pipeline = Pipeline([target], self.pipeline.sink, self.pipeline.dead_letters,
                            self.pipeline.ids, self.settings.indexer, self.services.metrics,
                            self.pipeline.related)
        prepared = pipeline.prepare(changes) if changes else None
        self.writers.submit((prepared, Done(offsets={tp: record.offset + 1},
                                            chunk=(chunk.index, chunk.number))))

    def _save(self, done: Done) -> None:
        """Runs on a writer thread once the batch (and every earlier one) is written."""
        changes = {tp.partition: offset for tp, offset in done.offsets.items()
                   if tp.topic == self.changes_topic}

        def save() -> None:
            if changes:
                self.offsets.save(done.indices, changes, done.epochs)
            if done.chunk is not None:
                self.services.checkpoints.chunk_done(*done.chunk)

        retry(save, what="checkpoint", backoff=self.backoff, stop=self.stop,
              retry_on=(PyMongoError,), health=self.health)
        if done.chunk is not None:
            self.metrics.chunks.inc()
        with self.lock:
            for tp, offset in done.offsets.items():
                self.saved[tp] = max(offset, self.saved.get(tp, 0))

    def _commit(self) -> None:
        """Commit to Kafka what is written and saved (the consumer's thread only)."""
        with self.lock:
            saved, self.saved = self.saved, {}
        owned = self.consumer.assignment() if self.consumer is not None else set()
        offsets = {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in saved.items()
                   if tp in owned}
        if offsets and self.consumer is not None:
            try:
                self.consumer.commit(offsets)
            except KafkaError as error:  # MongoDB holds the positions; Kafka's are for lag
                log.warning("offsets not committed to Kafka", extra={"error": repr(error)})

    def _measure_lag(self) -> None:
        if time.monotonic() < self.next_lag or self.consumer is None:
            return
        self.next_lag = time.monotonic() + LAG_EVERY_S
        owned = self._owned()
        if owned:
            try:
                ends = self.consumer.end_offsets(owned)
                self.metrics.lag.set(sum(max(0, ends[tp] - self.consumer.position(tp))
                                         for tp in owned))
            except KafkaError as error:
                log.debug("worker lag unknown", extra={"error": repr(error)})

    def _gap(self, polled: dict[TopicPartition, list[ConsumerRecord]]) -> str | None:
        """Records of a partition must follow on from where the worker sought or left off:
        a jump forward means the offsets in between are gone (the topic is never
        compacted), which Kafka's reset to the earliest offset would otherwise hide."""
        for tp, records in polled.items():
            if tp.topic != self.changes_topic:
                continue
            expected = self.expected.get(tp)
            if expected is not None and records[0].offset > expected:
                return (f"partition {tp.partition} resumed at offset {records[0].offset}, "
                        f"{records[0].offset - expected} after the {expected} it needed")
            self.expected[tp] = records[-1].offset + 1
        return None

    def _history_lost(self, error: str) -> None:
        """An offset off the topic. With the resync policy, one worker (the first to
        claim the resync) rebuilds every target into a fresh index; every worker's
        follower then moves to the fresh indices, which start after the gap."""
        lost = HistoryLost(
            f"an offset of {self.changes_topic} is no longer on the topic ({error}): "
            "changes were missed (topic retention shorter than the outage)",
            "rebuild with `esrec indexer worker --on-history-lost=resync`")
        if self.resync is None:
            raise lost
        with self.batches:
            self._drain()
        claim = self.services.checkpoints.collection
        try:
            claim.insert_one({"_id": f"resync|{self.changes_topic}", "at": time.time()})
        except DuplicateKeyError:  # another worker rebuilds: wait for its fresh indices
            log.warning("history lost; another worker resyncs", extra={"error": str(error)})
            self.stop.wait(self.settings.rollout.follow_interval_s)
            return
        try:
            log.error("history lost; resyncing into fresh indices", extra={"error": str(lost)})
            self.pipeline.targets = self.resync(self.pipeline.targets)
        finally:
            claim.delete_one({"_id": f"resync|{self.changes_topic}"})
        self._seek(self._owned())

