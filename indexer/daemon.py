"""The indexer daemon: stream -> pipeline -> checkpoint, until told to stop.

    loop:  poll a batch (<= max docs / bytes / wait)  ->  pipeline.process (all targets,
           every write acknowledged)  ->  save the position for every target
    idle:  save the stream's post-batch resume token, so a quiet collection never falls
           off the oplog
    follow: every few seconds, re-read which model versions are active; when one starts
           building (or is retired), drain, then restart the stream from the oldest
           checkpoint of the new set, so a new index gets every change after its backfill's
           operation time while the others drop the replay as stale (409)
    stop:  SIGTERM/SIGINT set a flag; the batch in hand finishes (or, if its writes cannot
           finish, is left for the next run to replay); the position saved last is the
           final checkpoint; a watchdog ends the process after shutdown_timeout_s.

MongoDB outages are retried from the last saved position; Elasticsearch outages inside
the sink. A lost history or an invalidated stream stops the daemon with the reason.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from bson.timestamp import Timestamp
from elastic_transport import TransportError
from pymongo.collection import Collection
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from esrec.retry import Backoff, retry
from esrec.settings import IndexerSettings
from indexer.checkpoint import Checkpoints, earliest
from indexer.metrics import IndexerMetrics
from indexer.pipeline import Pipeline, Prepared, Target
from indexer.source import HISTORY_LOST_CODES, ChangeStreamSource, Position

log = logging.getLogger("esrec.indexer")
HEALTHY_WITHIN_S = 30.0  # a loop that has not turned for this long is reported unhealthy
WRITE_AHEAD = 2  # batches read and embedded ahead of those being written
WRITERS = 2  # concurrent _bulk requests: lets Elasticsearch work while the next is encoded


# given the current targets, the new ones if the active model versions changed, else None
Follow = Callable[[list[Target]], list[Target] | None]


class MissingCheckpoint(RuntimeError):
    """A target index that was never backfilled."""


class Indexer:
    def __init__(self, items: Collection, pipeline: Pipeline, checkpoints: Checkpoints,
                 settings: IndexerSettings, metrics: IndexerMetrics,
                 stop: threading.Event, follow: tuple[Follow, float] | None = None) -> None:
        self.items = items
        self.pipeline = pipeline
        self.checkpoints = checkpoints
        self.settings = settings
        self.metrics = metrics
        self.stop = stop
        self.backoff = Backoff(max_s=settings.retry_max_delay_s)
        self.last_turn = time.monotonic()
        self.last_cluster_time: Timestamp | None = None
        self.saved = Position()  # the last position saved after its writes (set by run)
        self.follow = follow
        self.next_follow = 0.0
        self.new_targets: list[Target] | None = None  # set when the active versions changed

    @property
    def indices(self) -> list[str]:
        return [target.index for target in self.pipeline.targets]

    def start_position(self) -> Position:
        positions = []
        for index in self.indices:
            position = self.checkpoints.load(index)
            if position is None:
                raise MissingCheckpoint(
                    f"index {index} has no checkpoint: fill it first with "
                    "`esrec indexer backfill NAME@VERSION`")
            positions.append(position)
        return earliest(positions)

    def run(self) -> None:
        """Index until ``stop`` is set. Raises HistoryLost / StreamInvalidated / budget errors."""
        self.saved = self.start_position()
        log.info("indexer starting", extra={"targets": ",".join(self.indices),
                                            "from": self.saved.cluster_time})
        while not self.stop.is_set():
            if self.new_targets is not None:
                self._switch_targets(self.new_targets)
            if not self.pipeline.targets:  # every version retired: wait for a new one
                self.last_turn = time.monotonic()
                self.stop.wait(self.follow[1] if self.follow else 1.0)
                self._check_follow()
                continue
            try:
                source = retry(lambda: ChangeStreamSource(self.items, self.saved),
                               what="open stream", backoff=self.backoff, stop=self.stop,
                               retry_on=(ConnectionFailure,),
                               on_retry=lambda _: self.metrics.retries.labels("mongo").inc())
            except ConnectionFailure:
                if self.stop.is_set():
                    break
                raise
            try:
                self._stream(source)
            except (ConnectionFailure, OperationFailure) as error:
                if isinstance(error, OperationFailure) and (
                        error.code in HISTORY_LOST_CODES or not _resumable(error)):
                    raise
                self.metrics.retries.labels("mongo").inc()
                log.warning("MongoDB unavailable; resuming from the last checkpoint",
                            extra={"error": type(error).__name__})
                self.stop.wait(self.backoff.delay(2))
            finally:
                source.close()
        log.info("indexer stopped", extra={"at": self.saved.cluster_time})

    def _check_follow(self) -> bool:
        """Poll the active versions when due; True if they changed (the stream must restart)."""
        if self.follow is None or time.monotonic() < self.next_follow:
            return False
        follow, interval = self.follow
        self.next_follow = time.monotonic() + interval
        try:
            self.new_targets = follow(self.pipeline.targets)
        except (TransportError, PyMongoError) as error:  # keep indexing; poll again later
            log.warning("cannot read the model versions", extra={"error": str(error)})
        return self.new_targets is not None

    def _switch_targets(self, targets: list[Target]) -> None:
        before, after = set(self.indices), {target.index for target in targets}
        self.pipeline.targets, self.new_targets = targets, None
        log.info("model versions changed", extra={
            "added": ",".join(sorted(after - before)) or "-",
            "removed": ",".join(sorted(before - after)) or "-"})
        if targets:
            self.saved = self.start_position()

    def _stream(self, source: ChangeStreamSource) -> None:
        """Read and embed here; write and checkpoint on the writer threads."""
        settings = self.settings
        writers = _Writers(self._write, self._checkpoint)
        try:
            while not self.stop.is_set() and not self._check_follow():
                self.last_turn = time.monotonic()
                batch = source.poll(settings.batch_max_docs, settings.batch_max_bytes,
                                    settings.batch_max_wait_ms / 1000)
                if batch.position is None:
                    continue
                prepared = self.pipeline.prepare(batch.changes) if batch.changes else None
                writers.submit(prepared, batch.position,
                               batch.changes[-1].cluster_time if batch.changes else None)
        finally:
            writers.close()  # drains what was read: its writes, then its checkpoints

    def _write(self, prepared: Prepared | None) -> None:
        if prepared is not None:
            self.pipeline.commit(prepared)

    def _checkpoint(self, position: Position, cluster_time: Timestamp | None) -> None:
        self._save(position, caught_up=cluster_time is None)
        self.saved = position
        if cluster_time is None:
            self.metrics.lag.set(0.0)
        else:
            self.last_cluster_time = cluster_time
            self.metrics.lag.set(max(0.0, time.time() - cluster_time.time))

    def _save(self, position: Position, caught_up: bool) -> None:
        retry(lambda: self.checkpoints.save_all(self.indices, position, caught_up),
              what="checkpoint",
              backoff=self.backoff, stop=self.stop, retry_on=(PyMongoError,),
              on_retry=lambda _: self.metrics.retries.labels("checkpoint").inc())
        self.metrics.checkpoints.inc()

    def health(self) -> tuple[bool, dict[str, object]]:
        age = time.monotonic() - self.last_turn
        return age < HEALTHY_WITHIN_S, {
            "status": "ok" if age < HEALTHY_WITHIN_S else "stalled",
            "seconds_since_last_turn": round(age, 3),
            "last_cluster_time": self.last_cluster_time.time if self.last_cluster_time else None,
            "targets": self.indices,
        }


class _Writers:
    """WRITERS threads write batches concurrently; positions are saved strictly in order.

    Batches may land out of order (every write is version-guarded, so that is harmless),
    but a batch's position is saved only once it and every batch before it are written.
    The queue holds at most WRITE_AHEAD batches, each bounded by count and bytes: when
    Elasticsearch is slow the reader blocks in ``submit``, which is the backpressure.
    """

    def __init__(self, write: Callable[[Prepared | None], None],
                 checkpoint: Callable[[Position, Timestamp | None], None]) -> None:
        self.write = write
        self.checkpoint = checkpoint
        self.queue: queue.Queue[tuple | None] = queue.Queue(maxsize=WRITE_AHEAD)
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.finished: dict[int, tuple[Position, Timestamp | None]] = {}
        self.submitted = self.saved = 0
        self.threads = [threading.Thread(target=self._work, daemon=True, name=f"esrec-writer-{i}")
                        for i in range(WRITERS)]
        for thread in self.threads:
            thread.start()

    def _work(self) -> None:
        while (item := self.queue.get()) is not None:
            sequence, prepared, position, cluster_time = item
            if self.error is not None:
                continue
            try:
                self.write(prepared)
                with self.lock:
                    self.finished[sequence] = (position, cluster_time)
                    while self.saved in self.finished:
                        self.checkpoint(*self.finished.pop(self.saved))
                        self.saved += 1
            except BaseException as error:  # handed to the reader thread, re-raised there
                self.error = error

    def submit(self, prepared: Prepared | None, position: Position,
               cluster_time: Timestamp | None) -> None:
        item = (self.submitted, prepared, position, cluster_time)
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put(item, timeout=0.1)
                self.submitted += 1
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Finish what was submitted (drain), then stop the threads."""
        for _ in self.threads:
            self.queue.put(None)
        for thread in self.threads:
            thread.join()
        if self.error is not None:
            raise self.error


def _resumable(error: OperationFailure) -> bool:
    """Transient server states worth waiting out (primary stepping down, shutting down)."""
    return error.has_error_label("ResumableChangeStreamError") or error.code in {
        91, 189, 10107, 11600, 11602, 13435, 13436}
