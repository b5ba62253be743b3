"""An indexer worker: its share of the item-changes topic (and of backfill chunks) through
the one driver loop and the one pipeline, in a Kafka consumer group.

    TopicSource (indexer/topic_source.py) -> drive (indexer/driver.py): Pipeline.prepare
        for every live version (a chunk: its one index) -> writes acknowledged ->
    TopicCheckpoint.save (indexer/offsets.py): offsets per (index, partition) in MongoDB,
        never backwards; chunk completions -> the reader commits them to Kafka

Where each index stands is kept per (index, partition) in MongoDB, like the daemon's
per-index stream positions, so a worker that gains a partition, or sees a new model
version start building, seeks every partition to the oldest position of its targets and
the other indices drop the replay as stale (409). When the live versions change the
driver ends its turn, drains what was read, and the worker repositions and goes on. An
offset that fell off the topic (retention shorter than an outage) is a lost history:
stop, or with the resync policy rebuild every target and go on.
"""

from __future__ import annotations

import logging
import threading
import time

from kafka.errors import KafkaError
from pymongo.errors import DuplicateKeyError, PyMongoError

from indexer.changes import Batch, TopicPosition
from indexer.daemon import Resync
from indexer.driver import drive
from indexer.follower import Follower
from indexer.offsets import TopicCheckpoint
from indexer.pipeline import Pipeline, Target
from indexer.settings import IndexerSettings
from indexer.source import HistoryLost
from indexer.topic_source import TopicSource, WorkerMetrics
from runtime.clients import MongoCollection
from runtime.health import Health
from runtime.retry import Backoff, retry

log = logging.getLogger("esrec.worker")


class Worker:
    def __init__(self, source: TopicSource, checkpoint: TopicCheckpoint, pipeline: Pipeline,
                 claims: MongoCollection, settings: IndexerSettings, metrics: WorkerMetrics,
                 stop: threading.Event, health: Health, follower: Follower | None = None,
                 resync: Resync | None = None, follow_interval_s: float = 1.0) -> None:
        self.source = source
        self.checkpoint = checkpoint
        self.pipeline = pipeline
        self.claims = claims  # where the one resync of a lost history is claimed
        self.settings = settings
        self.metrics = metrics
        self.stop = stop
        self.health = health
        self.follower = follower
        self.resync = resync  # None: a lost history stops the worker
        self.follow_interval_s = follow_interval_s
        self.backoff = Backoff(max_s=settings.retry_max_delay_s)
        self.new_targets: list[Target] | None = None
        health.detail = self.detail

    @property
    def indices(self) -> list[str]:
        return [target.index for target in self.pipeline.targets]

    def detail(self) -> dict[str, object]:
        owned = sorted(tp.partition for tp in self.source.owned())
        return {"targets": self.indices, "partitions": owned}

    def run(self) -> None:
        """Consume until ``stop`` is set (waiting for Kafka if it is not up yet). Raises
        HistoryLost without the resync policy, and the pipeline's budget errors."""
        self.source.indices = self.indices
        try:
            retry(self.source.open, what="kafka", backoff=self.backoff, stop=self.stop,
                  retry_on=(KafkaError,), health=self.health)
        except KafkaError:
            return
        log.info("worker consuming", extra={"topics": f"{self.source.changes_topic},"
                                                      f"{self.source.backfill_topic}",
                                            "targets": ",".join(self.indices)})
        try:
            while not self.stop.is_set():
                try:
                    drive(self.source, self.pipeline, self._save, self.stop, self.settings,
                          self._turn)
                except HistoryLost as error:
                    self._history_lost(error)
                if self.new_targets is not None:
                    self._switch(self.new_targets)
        finally:
            self.source.close()
            log.info("worker stopped")

    def _turn(self) -> bool:
        """Once a loop: alive; True when the live versions changed (drain, reposition)."""
        self.health.turned()
        if self.follower is not None:
            self.new_targets = self.follower.changed(self.pipeline.targets)
        return self.new_targets is not None

    def _switch(self, targets: list[Target]) -> None:
        before = set(self.indices)
        self.pipeline.targets, self.new_targets = targets, None
        log.info("model versions changed", extra={
            "added": ",".join(sorted(set(self.indices) - before)) or "-",
            "removed": ",".join(sorted(before - set(self.indices))) or "-"})
        self.source.reposition(self.indices)

    def _save(self, batch: Batch) -> None:
        """Runs on a writer thread once the batch (and every earlier one) is written."""
        retry(lambda: self.checkpoint.save(batch), what="checkpoint", backoff=self.backoff,
              stop=self.stop, retry_on=(PyMongoError,), health=self.health)
        assert isinstance(batch.position, TopicPosition)
        if batch.position.chunk is not None:
            self.metrics.chunks.inc()

    def _history_lost(self, lost: HistoryLost) -> None:
        """An offset off the topic. With the resync policy, one worker (the first to
        claim the resync) rebuilds every target into a fresh index; every worker's
        follower then moves to the fresh indices, which start after the gap."""
        if self.resync is None:
            raise lost
        claim = {"_id": f"resync|{self.source.changes_topic}"}
        try:
            self.claims.insert_one({**claim, "at": time.time()})
        except DuplicateKeyError:  # another worker rebuilds: wait for its fresh indices
            log.warning("history lost; another worker resyncs", extra={"error": str(lost)})
            self.stop.wait(self.follow_interval_s)
            return
        try:
            log.error("history lost; resyncing into fresh indices", extra={"error": str(lost)})
            self.new_targets = self.resync(self.pipeline.targets)
        finally:
            self.claims.delete_one(claim)
