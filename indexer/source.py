"""The change-stream source: MongoDB change events -> versioned Changes, in order.

The source's state is only its resume position (token, cluster time, sequence). It reads
with ``full_document="updateLookup"``: an update carries the document as it is at lookup
time, which may be newer than the event; versioning makes that harmless. An update whose
document is gone by then is skipped: the delete that removed it follows in the stream.

With relations (a version's items joined with documents of other collections,
``towers.relations``) it watches the database, filtered to the items and those
collections: a change of a related document fans out into an upsert of every item that
points at it (read now), at the related change's version, so the item is re-embedded
with the related document as it is. A token is reused only by a stream of the same kind
(``Position.stream``); another kind starts at the position's cluster time (a replay the
external versions drop).

An idle stream still hands out a position once per ``HEARTBEAT_S``: its post-batch resume
token (so a quiet collection never falls off the oplog) and, as the watermark, the
server's cluster time read just before the stream was seen empty: everything up to it is
indexed once that position is saved. That is what makes lag 0 on a quiet catalog and
growing while the daemon cannot keep up or is cut off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo.change_stream import ChangeStream
from pymongo.errors import OperationFailure

from indexer.changes import Batch, Change, Position, document_codec, id_problem
from indexer.versioning import Sequencer, VersionOverflow
from runtime.clients import MongoCollection
from runtime.errors import DataLost
from towers.relations import Relation

log = logging.getLogger("esrec.indexer")

# Server error codes for "your resume point is gone" (mongo/src/mongo/base/error_codes.yml)
HISTORY_LOST_CODES = {286, 136}  # ChangeStreamHistoryLost, CappedPositionLost
_STOPPING = {"drop", "rename", "dropDatabase", "invalidate"}
HEARTBEAT_S = 1.0  # an idle stream confirms "caught up" this often


class HistoryLost(DataLost):
    """The saved resume point fell off the oplog: changes were missed."""


class StreamInvalidated(HistoryLost):
    """The watched collection was dropped or renamed: the stream cannot go on, and no
    change says which documents went with it. A lost history too: the same policy
    (stop with the fix, or resync from the collection as it is now) answers it."""


def server_time(collection: MongoCollection) -> Timestamp:
    """The cluster's current operation time: what "now" is for versions and lag."""
    hello = collection.database.client.admin.command("hello")
    operation_time: Timestamp = hello.get("operationTime") or hello["$clusterTime"][
        "clusterTime"]
    return operation_time


def stream_name(collection: MongoCollection, relations: Sequence[Relation]) -> str:
    """What a stream watches: the items collection, and the related collections."""
    return "+".join(sorted({collection.name, *(r.collection for r in relations)}))


class ChangeStreamSource:
    def __init__(self, collection: MongoCollection, position: Position, await_ms: int = 50,
                 on_overflow: Callable[[], None] = lambda: None,
                 relations: Sequence[Relation] = (), decode_documents: bool = True) -> None:
        self.collection = collection
        self.relations: dict[str, list[Relation]] = {}
        for relation in relations:
            self.relations.setdefault(relation.collection, []).append(relation)
        self.stream_name = stream_name(collection, relations)
        same_kind = position.stream == self.stream_name or (
            position.stream is None and not relations)  # older saves: the items stream
        token = position.token if same_kind else None
        self.sequencer = Sequencer(position.cluster_time if token else None,
                                   position.seq, on_overflow)
        options: dict[str, Any] = {"full_document": "updateLookup", "max_await_time_ms": await_ms}
        if token is not None:
            options["resume_after"] = token
        elif position.cluster_time is not None:
            options["start_at_operation_time"] = position.cluster_time
        # Decoded events are dicts the driver builds a whole server batch of in one C
        # call (bench.indexer's stream read alone: 8.5-12.5 us of esrec CPU an event,
        # against 18 for raw events inflated one by one). decode_documents=False keeps
        # raw events: the relay ships documents as the bytes they came in (decoding and
        # encoding them again was a third of its CPU).
        self.decode = document_codec(collection.codec_options)
        codec = self.decode if decode_documents else self.decode.with_options(
            document_class=RawBSONDocument)
        self.stream: ChangeStream[Mapping[str, Any]]
        try:
            if self.relations:
                self.stream = collection.database.with_options(codec_options=codec).watch(
                    [{"$match": {"ns.coll": {"$in": self.stream_name.split("+")}}}], **options)
            else:
                self.stream = collection.with_options(codec_options=codec).watch(**options)
        except OperationFailure as error:
            raise _history_lost(error) if error.code in HISTORY_LOST_CODES else error from None
        self.last_position = position
        self._taken: tuple[Mapping[str, Any], Timestamp, int] | None = None  # the last event
        self.next_heartbeat = 0.0  # the first idle poll confirms at once

    def poll(self, max_docs: int, max_bytes: int, max_wait_s: float) -> Batch:
        """Up to ``max_docs`` changes, waiting at most ``max_wait_s`` for the batch to fill."""
        batch = Batch()
        deadline = time.monotonic() + max_wait_s
        while len(batch.changes) < max_docs and batch.size_bytes < max_bytes:
            event = self._next()
            if event is None:
                if time.monotonic() >= deadline or batch.changes:
                    break
                continue
            self._take(event, batch)
            if time.monotonic() >= deadline:
                break
        self._hand_out_position(batch)
        if batch.changes:
            batch.watermark = batch.changes[-1].cluster_time
        elif batch.skipped == 0 and time.monotonic() >= self.next_heartbeat:
            self._confirm_idle(batch)
        if batch.position is not None:
            self.last_position = batch.position  # type: ignore[assignment]
        return batch

    def _next(self) -> Mapping[str, Any] | None:
        try:
            return self.stream.try_next()
        except OperationFailure as error:
            if error.code in HISTORY_LOST_CODES:
                raise _history_lost(error) from None
            raise

    def _confirm_idle(self, batch: Batch) -> None:
        """Read the server's time, then look once more: if the stream is still empty,
        everything up to that time has been handed out."""
        now = server_time(self.collection)
        event = self._next()
        if event is not None:  # not idle after all: a normal batch of one
            self._take(event, batch)
            self._hand_out_position(batch)
            batch.watermark = batch.changes[-1].cluster_time if batch.changes else None
            return
        self.next_heartbeat = time.monotonic() + HEARTBEAT_S
        token = dict(self.stream.resume_token or {}) or self.last_position.token
        batch.position = Position(token, self.sequencer.cluster_time, self.sequencer.seq,
                                  self.stream_name) if token is not None else self.last_position
        batch.watermark, batch.idle = now, True

    def _hand_out_position(self, batch: Batch) -> None:
        """The position after the last event taken: built once per batch, not per event."""
        if self._taken is not None:
            token, cluster_time, seq = self._taken
            batch.position = Position(dict(token), cluster_time, seq, self.stream_name)
            self._taken = None

    def _take(self, event: Mapping[str, Any], batch: Batch) -> None:
        operation = event["operationType"]
        if self.relations:
            related = (event.get("ns") or {}).get("coll")
            if related != self.collection.name and related in self.relations:
                self._fan_out(event, related, batch)
                return
        if operation in _STOPPING:
            raise StreamInvalidated(
                f"the {self.collection.full_name} collection saw '{operation}'; the stream "
                "cannot continue", "rebuild with `esrec indexer run "
                "--on-history-lost=resync` (fresh indices from the collection as it is now, "
                "then an alias switch)")
        cluster_time = event["clusterTime"]
        problem = None
        try:
            version = self.sequencer.next(cluster_time)
        except VersionOverflow as error:  # one odd event: a dead letter, not a stopped stream
            version, problem = 0, str(error)
        self._taken = (event["_id"], cluster_time, self.sequencer.seq)
        if operation == "delete":
            doc_id = self._key(event)
            batch.changes.append(Change("delete", doc_id, version, cluster_time,
                                        problem=problem or id_problem(doc_id)))
        elif operation in ("insert", "update", "replace"):
            document = event.get("fullDocument")
            if document is None:
                batch.skipped += 1
                return
            # a decoded document's size is measured by Change (one C encode, 2-5 us); a
            # $bsonSize stage in the stream (README: "Indexer CPU on this VM") saved less
            # than it cost the MongoDB stand-in (~100 us of its CPU an event)
            size = -1 if isinstance(document, dict) else len(document.raw)  # raw: its bytes
            doc_id = self._key(event)
            change = Change("upsert", doc_id, version, cluster_time, document,
                            problem or id_problem(doc_id), size)
            batch.changes.append(change)
            batch.size_bytes += change.size_bytes

    def _key(self, event: Mapping[str, Any]) -> Any:
        """The changed document's _id, decoded (a sub-document id is a dict)."""
        return self._decoded(event["documentKey"])["_id"]

    def _decoded(self, document: Mapping[str, Any]) -> Mapping[str, Any]:
        """A sub-document as a dict, whichever codec the stream was opened with (asked
        as "a dict?": RawBSONDocument is an ABC Mapping, whose isinstance costs ~0.5 us)."""
        if isinstance(document, dict):
            return document
        raw: bytes = document.raw  # type: ignore[attr-defined]
        return bson.decode(raw, self.decode)

    def _fan_out(self, event: Mapping[str, Any], collection: str, batch: Batch) -> None:
        """A related document changed: an upsert of every item that points at it, all at
        this event's version (each item is read now, as an update lookup would)."""
        operation = event["operationType"]
        cluster_time = event["clusterTime"]
        try:
            version, problem = self.sequencer.next(cluster_time), None
        except VersionOverflow as error:
            version, problem = 0, str(error)
        self._taken = (event["_id"], cluster_time, self.sequencer.seq)
        if operation in _STOPPING:
            log.warning("a related collection went away; its items keep their vectors "
                        "until they change", extra={"collection": collection,
                                                    "operation": operation})
            return
        for relation in self.relations[collection]:
            related = event.get("fullDocument")
            document = self._decoded(related) if related is not None else {}
            key = self._key(event) if relation.foreign_field == "_id" \
                else document.get(relation.foreign_field)
            if key is None:  # a delete by another field: which items pointed is unknown
                batch.skipped += 1
                continue
            for item in self.collection.find({relation.local_field: key}):
                change = Change("upsert", item["_id"], version, cluster_time, item,
                                problem or id_problem(item["_id"]))
                batch.changes.append(change)
                batch.size_bytes += change.size_bytes

    def close(self) -> None:
        self.stream.close()


def _history_lost(error: OperationFailure) -> HistoryLost:
    return HistoryLost(
        f"the saved resume point is no longer in the oplog (server error {error.code}: "
        f"{error.details.get('errmsg', error) if error.details else error}); changes were "
        "missed", "rebuild with `esrec indexer run --on-history-lost=resync` (a fresh index "
        "from a full scan, then an alias switch)")
