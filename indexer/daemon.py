"""The indexer daemon: the change stream through the driver loop, until told to stop.

    run:     start at the oldest saved position of the targets (a target the workers
             indexed further, before a switch back from the distributed mode: their
             watermark) -> drive(stream) -> save the position for every target after
             its writes are acknowledged
    idle:    the stream confirms "caught up" once a heartbeat (its post-batch resume
             token, so a quiet collection never falls off the oplog, and the server's time)
    follow:  a Follower re-reads the active model versions; when they change, drain, then
             restart the stream from the oldest position of the new set
    history: a resume point that fell off the oplog, or a dropped or renamed collection
             (StreamInvalidated), raises HistoryLost, or, with the resync policy,
             rebuilds every target into a fresh index and goes on
    stop:    SIGTERM/SIGINT set a flag; the batch in hand finishes (or, if its writes cannot
             finish, is left for the next run to replay); a watchdog ends the process
             after shutdown_timeout_s.

MongoDB outages are retried from the last saved position, Elasticsearch outages inside
the sink; both turn /healthz degraded with the reason, and the lag keeps growing on the
server's clock until the index catches up again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from bson.timestamp import Timestamp
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from indexer.changes import Batch, Position
from indexer.checkpoint import Checkpoints, earliest, lag_seconds
from indexer.driver import drive
from indexer.follower import Follower
from indexer.metrics import IndexerMetrics
from indexer.pipeline import Pipeline, Target
from indexer.relations import relations_of
from indexer.settings import IndexerSettings
from indexer.source import HISTORY_LOST_CODES, ChangeStreamSource, HistoryLost, server_time
from runtime.clients import MongoCollection
from runtime.errors import Refused
from runtime.health import Health
from runtime.retry import Backoff, retry

log = logging.getLogger("esrec.indexer")

Resync = Callable[[list[Target]], list[Target]]  # rebuild targets into fresh indices


class MissingCheckpoint(Refused):
    """A target index that was never backfilled."""


class ServerClock:
    """The MongoDB cluster's time, estimated between reads from the last one (lag is the
    server's now minus a watermark: no host clock is compared with the server's)."""

    def __init__(self) -> None:
        self.seen: tuple[int, float] | None = None  # (server seconds, monotonic at reading)

    def observe(self, server: Timestamp) -> None:
        self.seen = (server.time, time.monotonic())

    def now(self) -> Timestamp | None:
        if self.seen is None:
            return None
        seconds, at = self.seen
        return Timestamp(int(seconds + time.monotonic() - at), 0)


class Indexer:
    def __init__(self, items: MongoCollection, pipeline: Pipeline, checkpoints: Checkpoints,
                 settings: IndexerSettings, metrics: IndexerMetrics, stop: threading.Event,
                 health: Health, follower: Follower | None = None,
                 resync: Resync | None = None,
                 relayed: Callable[[str], Timestamp | None] = lambda index: None) -> None:
        self.items = items
        self.pipeline = pipeline
        self.checkpoints = checkpoints
        self.settings = settings
        self.metrics = metrics
        self.stop = stop
        self.health = health
        self.follower = follower
        self.resync = resync  # None: a lost history stops the daemon
        self.relayed = relayed  # index -> what the workers indexed (distributed mode)
        self.backoff = Backoff(max_s=settings.retry_max_delay_s)
        self.clock = ServerClock()
        self.saved = Position()  # the last position saved after its writes (set by run)
        self.watermark: Timestamp | None = None  # ... and what it proves is indexed
        self.idle = False
        self.new_targets: list[Target] | None = None  # set when the active versions changed
        metrics.lag.set_function(lambda: self.lag_s() or 0.0)

    @property
    def indices(self) -> list[str]:
        return [target.index for target in self.pipeline.targets]

    def lag_s(self) -> float | None:
        now = self.clock.now()
        return None if now is None else lag_seconds(self.watermark, self.idle, now)

    def start_position(self) -> Position:
        """Each target's saved position, or where the workers stopped if they indexed it
        further (a switch back from the distributed mode resumes there, not at this
        daemon's older checkpoint or a build's start, replaying everything since)."""
        positions = []
        for index in self.indices:
            position = self.checkpoints.load(index)
            handed_over = self.relayed(index)
            if handed_over is not None and (position is None or position.cluster_time is None
                                            or handed_over > position.cluster_time):
                log.info("resuming where the workers stopped", extra={
                    "index": index, "from": handed_over,
                    "own_checkpoint": position.cluster_time if position else None})
                position = Position(None, handed_over)
            if position is None:
                raise MissingCheckpoint(f"index {index} has no checkpoint",
                                        "fill it first with `esrec indexer backfill NAME@VERSION`")
            positions.append(position)
        return earliest(positions)

    def run(self) -> None:
        """Index until ``stop`` is set. Raises HistoryLost (StreamInvalidated too) without
        the resync policy, and budget errors."""
        self._start()
        log.info("indexer starting", extra={"targets": ",".join(self.indices),
                                            "from": self.saved.cluster_time})
        while not self.stop.is_set():
            if self.new_targets is not None:
                self._switch_targets(self.new_targets)
            if not self.pipeline.targets:  # every version retired: wait for a new one
                self.health.turned()
                self.stop.wait(self.follower.wait() if self.follower else 1.0)
                self._follow()
                continue
            try:
                self._stream()
            except HistoryLost as error:
                if self.resync is None:
                    raise
                log.error("history lost; resyncing into fresh indices", extra={
                    "error": str(error)})
                self._switch_targets(self.resync(self.pipeline.targets))
        log.info("indexer stopped", extra={"at": self.saved.cluster_time})

    def _start(self) -> None:
        """The saved positions and the server's time, waiting for MongoDB if it is down."""
        def read() -> Position:
            self.clock.observe(server_time(self.items))
            return self.start_position()

        self.saved = retry(read, what="mongodb", backoff=self.backoff, stop=self.stop,
                           retry_on=(ConnectionFailure,), health=self.health,
                           on_retry=lambda _: self.metrics.retries.labels("mongo").inc())
        progress = [self.checkpoints.progress(index) for index in self.indices]
        watermarks = [p.watermark for p in progress if p is not None and p.watermark]
        self.watermark = min(watermarks) if watermarks else self.saved.cluster_time

    def _stream(self) -> None:
        """One change stream from the saved position, until stopped or the targets change."""
        try:
            source = ChangeStreamSource(
                self.items, self.saved, on_overflow=self.metrics.sequence_overflows.inc,
                relations=relations_of([target.artifact.manifest
                                        for target in self.pipeline.targets]))
        except ConnectionFailure as error:
            self._mongo_unavailable(error)
            return
        try:
            drive(source, self.pipeline, self._save, self.stop, self.settings, self._turn)
        except (ConnectionFailure, OperationFailure) as error:
            if isinstance(error, OperationFailure) and (
                    error.code in HISTORY_LOST_CODES or not _resumable(error)):
                raise
            self._mongo_unavailable(error)
        finally:
            source.close()

    def _mongo_unavailable(self, error: PyMongoError) -> None:
        self.metrics.retries.labels("mongo").inc()
        self.health.retrying("mongodb", error)
        log.warning("MongoDB unavailable; resuming from the last checkpoint",
                    extra={"error": type(error).__name__})
        self.stop.wait(self.backoff.delay(2))

    def _turn(self) -> bool:
        """Once a loop: alive; True when the active versions changed (restart the stream)."""
        self.health.turned()
        return self._follow()

    def _follow(self) -> bool:
        if self.follower is not None:
            self.new_targets = self.follower.changed(self.pipeline.targets)
        return self.new_targets is not None

    def _switch_targets(self, targets: list[Target]) -> None:
        before, after = set(self.indices), {target.index for target in targets}
        self.pipeline.targets, self.new_targets = targets, None
        log.info("model versions changed", extra={
            "added": ",".join(sorted(after - before)) or "-",
            "removed": ",".join(sorted(before - after)) or "-"})
        if targets:
            self.saved = self.start_position()

    def _save(self, batch: Batch) -> None:
        position = batch.position
        assert isinstance(position, Position)
        retry(lambda: self.checkpoints.save_all(self.indices, position, batch.watermark,
                                                batch.idle),
              what="checkpoint", backoff=self.backoff, stop=self.stop,
              retry_on=(PyMongoError,), health=self.health,
              on_retry=lambda _: self.metrics.retries.labels("checkpoint").inc())
        self.health.recovered("mongodb")  # the stream and the checkpoint went through
        self.metrics.checkpoints.inc()
        self.saved, self.idle = position, batch.idle
        if batch.watermark is not None:
            self.watermark = batch.watermark
            if batch.idle:  # an idle watermark is the server's time when it was read
                self.clock.observe(batch.watermark)

    def detail(self) -> dict[str, object]:
        """What /healthz adds to the status: targets, lag and how far the index is."""
        return {"targets": self.indices, "lag_s": self.lag_s(), "caught_up": self.idle,
                "last_cluster_time": self.saved.cluster_time.time
                if self.saved.cluster_time else None}


def _resumable(error: OperationFailure) -> bool:
    """Transient server states worth waiting out (primary stepping down, shutting down)."""
    return error.has_error_label("ResumableChangeStreamError") or error.code in {
        91, 189, 10107, 11600, 11602, 13435, 13436}
