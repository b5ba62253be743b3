"""The change-stream source: MongoDB change events -> versioned Changes, in order.

The source's state is only its resume position (token, cluster time, sequence). It reads
with ``full_document="updateLookup"``: an update carries the document as it is at lookup
time, which may be newer than the event; versioning makes that harmless. An update whose
document is gone by then is skipped: the delete that removed it follows in the stream.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import bson
from bson.timestamp import Timestamp
from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from indexer.versioning import Sequencer

# Server error codes for "your resume point is gone" (mongo/src/mongo/base/error_codes.yml)
HISTORY_LOST_CODES = {286, 136}  # ChangeStreamHistoryLost, CappedPositionLost
_STOPPING = {"drop", "rename", "dropDatabase", "invalidate"}


class HistoryLost(RuntimeError):
    """The saved resume point fell off the oplog: changes were missed."""


class StreamInvalidated(RuntimeError):
    """The watched collection was dropped or renamed: the stream cannot go on."""


@dataclass(frozen=True)
class Position:
    """Where a stream (re)starts: after a token, or at an operation time (backfill's T)."""

    token: dict[str, Any] | None = None
    cluster_time: Timestamp | None = None
    seq: int = 0  # sequence of the token's event within its cluster time


@dataclass(frozen=True)
class Change:
    op: Literal["upsert", "delete"]
    doc_id: Any  # the MongoDB _id
    version: int
    cluster_time: Timestamp
    document: dict[str, Any] | None = None
    size_bytes: int = field(init=False, default=0)  # BSON size of the document

    def __post_init__(self) -> None:
        # measured once here: it bounds the batch and is checked against max_document_bytes
        if self.document is not None:
            object.__setattr__(self, "size_bytes", len(bson.encode(self.document)))


@dataclass
class Batch:
    changes: list[Change] = field(default_factory=list)
    position: Position | None = None  # resume here once every change is acknowledged
    skipped: int = 0  # updates of documents deleted before the lookup
    size_bytes: int = 0


def es_id(doc_id: Any) -> str:
    """Elasticsearch ids are strings; ObjectIds, ints and strings all map one to one."""
    return str(doc_id)


class ChangeStreamSource:
    def __init__(self, collection: Collection, position: Position,
                 await_ms: int = 50) -> None:
        self.collection = collection
        self.sequencer = Sequencer(position.cluster_time if position.token else None,
                                   position.seq)
        options: dict[str, Any] = {"full_document": "updateLookup", "max_await_time_ms": await_ms}
        if position.token is not None:
            options["resume_after"] = position.token
        elif position.cluster_time is not None:
            options["start_at_operation_time"] = position.cluster_time
        try:
            self.stream = collection.watch(**options)
        except OperationFailure as error:
            raise _history_lost(error) if error.code in HISTORY_LOST_CODES else error from None
        self.last_position = position

    def poll(self, max_docs: int, max_bytes: int, max_wait_s: float) -> Batch:
        """Up to ``max_docs`` changes, waiting at most ``max_wait_s`` for the batch to fill."""
        batch = Batch()
        deadline = time.monotonic() + max_wait_s
        while len(batch.changes) < max_docs and batch.size_bytes < max_bytes:
            try:
                event = self.stream.try_next()
            except OperationFailure as error:
                if error.code in HISTORY_LOST_CODES:
                    raise _history_lost(error) from None
                raise
            if event is None:
                if time.monotonic() >= deadline or batch.changes:
                    break
                continue
            self._take(event, batch)
            if time.monotonic() >= deadline:
                break
        if not batch.changes and batch.skipped == 0:  # idle: keep the position fresh
            token = self.stream.resume_token
            if token is not None and token != self.last_position.token:
                batch.position = Position(token, self.sequencer.cluster_time,
                                          self.sequencer.seq)
        if batch.position is not None:
            self.last_position = batch.position
        return batch

    def _take(self, event: dict[str, Any], batch: Batch) -> None:
        operation = event["operationType"]
        if operation in _STOPPING:
            raise StreamInvalidated(
                f"the {self.collection.full_name} collection saw '{operation}'; the stream "
                "cannot continue. Rebuild the index (esrec indexer backfill) once the "
                "collection is back")
        cluster_time = event["clusterTime"]
        version = self.sequencer.next(cluster_time)
        batch.position = Position(event["_id"], cluster_time, self.sequencer.seq)
        doc_id = event["documentKey"]["_id"]
        if operation == "delete":
            batch.changes.append(Change("delete", doc_id, version, cluster_time))
        elif operation in ("insert", "update", "replace"):
            document = event.get("fullDocument")
            if document is None:
                batch.skipped += 1
                return
            change = Change("upsert", doc_id, version, cluster_time, document)
            batch.changes.append(change)
            batch.size_bytes += change.size_bytes

    def close(self) -> None:
        self.stream.close()


def _history_lost(error: OperationFailure) -> HistoryLost:
    return HistoryLost(
        f"the saved resume point is no longer in the oplog (server error {error.code}: "
        f"{error.details.get('errmsg', error) if error.details else error}); changes were "
        "missed. Rebuild with `esrec indexer run --on-history-lost=resync` (a fresh index "
        "from a full scan, then an alias switch)")
