"""The worker's source: its share of the item-changes and item-backfill topics, as the
batches the one driver loop (indexer/driver.py) writes.

    poll: commit to Kafka what the checkpoint saved -> check the group membership ->
          consumer.poll -> seek partitions assigned meanwhile -> a gap is a lost history
          -> the packs of item changes (indexer/messages.py) as batches of up to
          max_docs changes (a fenced relay's dropped, big documents read by id), each
          backfill chunk (its documents; big ones read by id) as a batch of its own
    position: TopicPosition, the next offset of every partition read (offsets.py saves it)

Kafka's group protocol gives each worker its partitions. A partition gained is paused
until the reader seeks it to the oldest saved offset of the live indices (the others
drop the replay as stale, 409); chunk partitions resume where the group committed. The
rebalance callbacks run on kafka-python's IO thread, which also sends the heartbeats:
they only record what changed and never wait. A batch of a revoked partition that is
still being written saves its offsets with ``$max``; the next owner replays at most the
few batches in flight.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections import deque
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import MemberState, OffsetAndMetadata
from prometheus_client import CollectorRegistry, Counter, Gauge

from indexer.changes import Batch, Change, TopicPosition
from indexer.checkpoint import Checkpoints
from indexer.messages import decode_chunk
from indexer.offsets import TopicCheckpoint, TopicOffsets
from indexer.packs import FetchedPacks
from indexer.pipeline import Target
from indexer.settings import IndexerConfig
from indexer.snapshot import RawDocuments
from indexer.source import HistoryLost
from indexer.versioning import external_version
from runtime.clients import MongoCollection, ensure_topic, group_consumer

log = logging.getLogger("esrec.worker")
LAG_EVERY_S = 5.0
# Kafka's committed offsets are for lag tools (MongoDB holds the change positions) and
# where chunk partitions resume (a chunk written twice is harmless): committing every
# batch made each small batch a write to __consumer_offsets
COMMIT_EVERY_S = 1.0
METADATA_EVERY_MS = 15_000  # partitions added to a topic reach the group within this
# an idle poll's longest wait: Kafka answers as soon as a message arrives, so a longer
# wait only means fewer rounds of the idle loop, each a few hand-overs between this thread
# and the Kafka client's IO thread (an idle worker's CPU: 6.4-6.8 ms a second at 0.5 s,
# 5.3 at 1 s, 4.4 at 2 s); it is also how often an idle worker follows the model
# versions, so it is at most the follow interval, and how long a stop may wait
IDLE_WAIT_S = 2.0
# how long Kafka holds a fetch that finds nothing: it answers as soon as a message
# arrives, so this only sets how often an idle worker asks. Kafka's 500 ms made the fetch
# rounds half of an idle worker's CPU (9.5 -> 4.9 ms a second here), a fixed cost that
# servers slower than the workers spread over few changes; the price: a seek while the
# topics are quiet waits for the fetch in flight, this long at most
FETCH_WAIT_MS = 2000


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry  # beside the pipeline's own metrics
        self.partitions = Gauge("esrec_worker_partitions", "Item-changes partitions owned",
                                registry=r)
        self.lag = Gauge("esrec_worker_lag", "Messages behind in the owned partitions",
                         registry=r)
        self.fenced = Counter("esrec_worker_fenced_messages", "Changes dropped: sent by a "
                              "relay whose lease had been taken over", registry=r)
        self.chunks = Counter("esrec_worker_backfill_chunks", "Backfill chunks written",
                              registry=r)
        self.rejoins = Counter("esrec_worker_rejoins", "Group memberships started again: "
                               "an assignment the Kafka client could not decode, or a "
                               "membership that stopped heartbeating", registry=r)


def membership_stalled(state: str, last_heartbeat_s: float, since_s: float,
                       session_s: float, rebalance_s: float) -> str | None:
    """Why a consumer's group membership is lost though its client still waits, or None.

    A stable member whose heartbeats went unanswered for two session timeouts was
    expired by the coordinator; a member rebalancing for longer than the rebalance
    timeout will never be assigned. Either way only a fresh membership gets partitions
    again (seen under CPU starvation: a SyncGroup that never completed)."""
    if state == MemberState.STABLE and last_heartbeat_s > 2 * session_s:
        return f"no heartbeat answered for {last_heartbeat_s:.0f} s"
    if state != MemberState.STABLE and since_s > rebalance_s + session_s:
        return f"rebalancing for {since_s:.0f} s"
    return None


class TopicSource(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, settings: IndexerConfig, items: MongoCollection,
                 offsets: TopicOffsets, checkpoints: Checkpoints,
                 checkpoint: TopicCheckpoint, chunk_target: Callable[[str, str], Target],
                 metrics: WorkerMetrics) -> None:
        self.settings = settings
        self.items = items
        self.documents = RawDocuments(items)
        self.offsets = offsets
        self.checkpoints = checkpoints  # a new index's stream position: where it starts
        self.checkpoint = checkpoint
        self.chunk_target = chunk_target  # (model ref, index) -> the chunk's one target
        self.metrics = metrics
        topics = settings.kafka.topics
        self.changes_topic, self.backfill_topic = topics.item_changes, topics.item_backfill
        self.indices: list[str] = []  # the live indices: set by the worker (reposition)
        self.consumer: KafkaConsumer | None = None
        self.lock = threading.Lock()  # the callbacks' state, shared with the IO thread
        self.unpositioned: set[TopicPartition] = set()  # assigned, not yet sought
        self.expected: dict[TopicPartition, int] = {}  # the next offset each must have
        self.packs = FetchedPacks(metrics.fenced.inc)  # change packs read, not yet batched
        # chunk records read, handed out one by one (their documents read then)
        self.ready: deque[tuple[ConsumerRecord, TopicPartition]] = deque()
        self.targets: dict[str, Target] = {}  # chunk index -> its target
        self.changed_at = time.monotonic()  # the membership's last sign of life
        self.next_lag = 0.0
        self.next_commit = 0.0
        self.idle_wait_s = min(IDLE_WAIT_S, settings.rollout.follow_interval_s)

    # -- the membership ------------------------------------------------------------------

    def open(self) -> None:
        """Join the group (raises KafkaError while Kafka is not there yet)."""
        indexer = self.settings.indexer
        topics = [self.changes_topic, self.backfill_topic]
        for topic in topics:  # subscribed: they must exist
            ensure_topic(self.settings.kafka, topic, indexer.partitions)
        consumer = group_consumer(self.settings.kafka, topics, indexer.worker_group,
                                  listener=self, metadata_max_age_ms=METADATA_EVERY_MS,
                                  enable_auto_commit=False,
                                  # only before the reader seeks a new partition (it is
                                  # paused until then); a reset past a gap is caught by _gap
                                  auto_offset_reset="earliest",
                                  session_timeout_ms=indexer.worker_session_timeout_ms,
                                  heartbeat_interval_ms=indexer.worker_session_timeout_ms // 4,
                                  max_poll_interval_ms=indexer.worker_rebalance_timeout_ms,
                                  fetch_max_bytes=64 * 1024 * 1024,
                                  fetch_max_wait_ms=FETCH_WAIT_MS,
                                  max_partition_fetch_bytes=indexer.max_message_bytes * 2)
        self.consumer = consumer
        self.changed_at = time.monotonic()

    def close(self) -> None:
        """Commit what is saved and leave the group (the driver drained the writers)."""
        if self.consumer is None:
            return
        try:
            self._commit(force=True)
        finally:
            self.consumer.close()
            self.consumer = None
            self.metrics.partitions.set(0)

    def _rejoin(self, why: str) -> None:
        log.warning("group membership lost; joining again", extra={"error": why})
        self.metrics.rejoins.inc()
        self.close()
        with self.lock:
            self.unpositioned.clear()
            self.expected.clear()
        self.ready.clear()
        self.packs.forget()
        self.open()

    def _check_membership(self) -> None:
        assert self.consumer is not None
        coordinator = self.consumer._coordinator  # kafka-python exposes no public state
        now = time.monotonic()
        indexer = self.settings.indexer
        stalled = membership_stalled(
            coordinator.state, now - max(coordinator.heartbeat.last_receive, self.changed_at),
            now - self.changed_at, indexer.worker_session_timeout_ms / 1000,
            indexer.worker_rebalance_timeout_ms / 1000)
        if coordinator.state == MemberState.STABLE and coordinator.heartbeat.last_receive > \
                self.changed_at:
            self.changed_at = coordinator.heartbeat.last_receive
        if stalled is not None:
            self._rejoin(stalled)

    # kafka-python runs these on its IO thread: record, never wait (heartbeats wait too)

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        with self.lock:
            self.unpositioned -= revoked
            for tp in revoked:
                self.expected.pop(tp, None)
        self.changed_at = time.monotonic()
        self.metrics.partitions.set(len(set(self.owned()) - revoked))

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        assert self.consumer is not None
        self.consumer.pause(*assigned)
        with self.lock:
            self.unpositioned |= assigned
        self.changed_at = time.monotonic()
        self.metrics.partitions.set(len(self.owned()))  # local state: no broker call
        log.info("partitions assigned", extra={"partitions": ",".join(
            f"{tp.topic}:{tp.partition}" for tp in sorted(assigned))})

    def owned(self) -> list[TopicPartition]:
        """The item-changes partitions this worker holds now."""
        if self.consumer is None:
            return []
        return [tp for tp in self.consumer.assignment() if tp.topic == self.changes_topic]

    # -- positions -----------------------------------------------------------------------

    def reposition(self, indices: list[str]) -> None:
        """The live indices changed (the writers are drained): read every owned partition
        again from the oldest saved offset of the new set."""
        self.indices = indices
        self.packs.forget()
        self._seek(self.owned())

    def _position(self) -> set[TopicPartition]:
        """Seek newly assigned partitions, then let them be fetched; returns them. One
        assigned while this runs waits for the next poll."""
        assert self.consumer is not None
        owned: set[TopicPartition] = self.consumer.assignment()
        with self.lock:
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

    def _seek(self, partitions: list[TopicPartition]) -> None:
        """Each partition from the oldest saved offset of the live indices."""
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
            self.packs.epochs[tp.partition] = self.offsets.epoch(tp.partition)

    def _initial_offsets(self, index: str) -> dict[int, int]:
        """Where an index no worker wrote yet starts: the first message at or after the
        cluster time its stream position names (its backfill's T, or where a daemon
        left it); the whole topic if it names none."""
        assert self.consumer is not None
        partitions = [TopicPartition(self.changes_topic, p) for p in
                      self.consumer.partitions_for_topic(self.changes_topic) or ()]
        position = self.checkpoints.load(index)
        if position is None or position.cluster_time is None:
            starts = self.consumer.beginning_offsets(partitions)
            return {tp.partition: int(offset) for tp, offset in starts.items()}
        at = position.cluster_time.time * 1000
        found = self.consumer.offsets_for_times({tp: at for tp in partitions})
        ends = self.consumer.end_offsets(partitions)
        return {tp.partition: int(found[tp].offset if found.get(tp) else ends[tp])
                for tp in partitions}

    def _gap(self, polled: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Records of a partition must follow on from where the reader sought or left
        off: a jump forward means the offsets in between are gone (the topic is never
        compacted), which Kafka's reset to the earliest offset would otherwise hide."""
        for tp, records in polled.items():
            if tp.topic != self.changes_topic:
                continue
            expected = self.expected.get(tp)
            if expected is not None and records[0].offset > expected:
                raise HistoryLost(
                    f"an offset of {self.changes_topic} is no longer on the topic "
                    f"(partition {tp.partition} resumed at offset {records[0].offset}, "
                    f"{records[0].offset - expected} after the {expected} it needed): "
                    "changes were missed (topic retention shorter than the outage)",
                    "rebuild with `esrec indexer worker --on-history-lost=resync`")
            self.expected[tp] = records[-1].offset + 1

    # -- batches -------------------------------------------------------------------------

    def poll(self, max_docs: int, max_bytes: int, max_wait_s: float) -> Batch:
        """The next batch: up to ``max_docs`` changes and ``max_bytes`` of documents,
        waiting at most ``max_wait_s`` after the first for the batch to fill (a pack may
        be split over two batches); or one backfill chunk; no position when nothing
        came."""
        if self.ready:
            return self._chunk(*self.ready.popleft())
        assert self.consumer is not None
        self._commit()
        self._check_membership()
        self._measure_lag()
        # packs left from the last batch count as arrived
        filled_by = time.monotonic() + max_wait_s if self.packs else None
        while not self.ready:
            if self.packs.waiting >= max_docs:
                # a poll only keeps the membership alive (one within the rebalance timeout)
                self._fetch(0, 1)
                break
            if filled_by is None:  # nothing yet: return as soon as something arrives
                got = self._fetch(max(max_wait_s, self.idle_wait_s), max_docs)
                if not got and not self.packs:
                    return Batch()
                filled_by = time.monotonic() + max_wait_s
            else:
                left = filled_by - time.monotonic()
                if left <= 0:
                    break
                self._fetch(left, max_docs)
        if self.packs:
            return self._changes(max_docs, max_bytes)
        return self._chunk(*self.ready.popleft()) if self.ready else Batch()

    def _fetch(self, wait_s: float, max_records: int) -> bool:
        """One Kafka poll: packs to ``self.packs``, chunk records to ``self.ready``;
        whether any record came."""
        assert self.consumer is not None
        try:
            polled = self.consumer.poll(timeout_ms=int(wait_s * 1000), max_records=max_records)
        except struct.error as error:
            # kafka-python cannot decode an empty SyncGroup assignment, which a
            # coordinator may send mid-rebalance; the next poll joins again
            log.warning("undecodable group assignment; rejoining",
                        extra={"error": repr(error)})
            self.metrics.rejoins.inc()
            return False
        positioned = self._position()  # fetched before the seek: read again
        polled = {tp: records for tp, records in polled.items() if tp not in positioned}
        self.packs.forget(positioned)
        self._gap(polled)
        for tp, records in polled.items():
            for record in records:
                if tp.topic == self.changes_topic:
                    self.packs.add(tp, record.offset, record.value)
                else:
                    self.ready.append((record, tp))
        return bool(polled)

    def _changes(self, max_docs: int, max_bytes: int) -> Batch:
        """The next changes of the packs read (big documents read by id)."""
        assert self.consumer is not None
        batch, fetch = self.packs.batch(self.consumer.assignment(), max_docs, max_bytes)
        if fetch:
            batch.changes = self._fetched(batch.changes, fetch)
        return batch

    def _fetched(self, changes: list[Change], positions: list[int]) -> list[Change]:
        """Changes whose document was too big for a message, with the document read by id
        (gone since: skipped, the delete that removed it follows)."""
        ids = [changes[n].doc_id for n in positions]
        found = {repr(d["_id"]): d for d in self.items.find({"_id": {"$in": ids}})}
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

    def _chunk(self, record: ConsumerRecord, tp: TopicPartition) -> Batch:
        """A backfill share: its documents (those too big for the message read by id)
        at version (T, 0), for its one index."""
        chunk = decode_chunk(record.value)
        target = self.targets.get(chunk.index)
        if target is None:
            target = self.targets[chunk.index] = self.chunk_target(chunk.ref, chunk.index)
        version = external_version(chunk.operation_time, 0)
        found = chunk.documents + (list(self.documents.collection.find(
            {"_id": {"$in": chunk.ids}})) if chunk.ids else [])
        changes = self.documents.upserts(found, version, chunk.operation_time)
        return Batch(changes, TopicPosition({(tp.topic, tp.partition): record.offset + 1},
                                            chunk=(chunk.index, chunk.number)),
                     targets=[target])

    # -- Kafka's view ----------------------------------------------------------------------

    def _commit(self, force: bool = False) -> None:
        """Commit to Kafka what is written and saved, for the partitions still owned (at
        most once every COMMIT_EVERY_S unless ``force``)."""
        assert self.consumer is not None
        if not force and time.monotonic() < self.next_commit:
            return
        self.next_commit = time.monotonic() + COMMIT_EVERY_S
        saved = self.checkpoint.committable()
        if not saved:
            return
        owned = self.consumer.assignment()
        offsets = {tp: OffsetAndMetadata(offset, "", -1) for (topic, partition), offset in
                   saved.items() if (tp := TopicPartition(topic, partition)) in owned}
        if offsets:
            try:
                self.consumer.commit(offsets)
            except KafkaError as error:  # MongoDB holds the positions; Kafka's are for lag
                log.warning("offsets not committed to Kafka", extra={"error": repr(error)})

    def _measure_lag(self) -> None:
        if time.monotonic() < self.next_lag or self.consumer is None:
            return
        self.next_lag = time.monotonic() + LAG_EVERY_S
        owned = self.owned()
        if owned:
            try:
                ends = self.consumer.end_offsets(owned)
                self.metrics.lag.set(sum(max(0, ends[tp] - self.consumer.position(tp))
                                         for tp in owned))
            except KafkaError as error:
                log.debug("worker lag unknown", extra={"error": repr(error)})
