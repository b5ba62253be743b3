"""The snapshot source: a backfill's scan of the collection, with the stream's contract.

    T = the cluster's operation time when the backfill starts (kept in its state)
    scan:   the collection's documents in _id order, one cursor, from the last _id saved
    poll() -> the next page of them, each as an upsert with version (T, 0)
    position = (T, last _id handed out, count): saved like a stream position, in order

No snapshot read is needed: a document scanned after a later change carries newer
content under the older version T, and the streamed change (version > T) rewrites it.

A resumed scan must cross BSON types: a query ``{_id: {$gt: x}}`` matches only ids of
x's type (type bracketing), so when it runs out the scan goes on with every type that
sorts after x's (``$type``), in the server's own sort order.
"""

from __future__ import annotations

import datetime
import re
import threading
import time
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import bson
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.raw_bson import RawBSONDocument
from bson.regex import Regex
from bson.timestamp import Timestamp
from pymongo.cursor import Cursor

from indexer.changes import Batch, Change, SnapshotPosition, document_codec, id_problem
from indexer.versioning import external_version
from runtime.clients import MongoCollection

# BSON comparison order of the types an _id can have (arrays cannot be ids)
_TYPE_ORDER: list[tuple[tuple[type, ...], list[str]]] = [
    ((MinKey,), ["minKey"]),
    ((type(None),), ["null"]),
    ((int, Int64, float, bson.Decimal128), ["int", "long", "double", "decimal"]),
    ((str,), ["string", "symbol"]),
    ((dict,), ["object"]),
    ((bytes, bson.Binary), ["binData"]),
    ((bson.ObjectId,), ["objectId"]),
    ((bool,), ["bool"]),
    ((datetime.datetime,), ["date"]),
    ((Timestamp,), ["timestamp"]),
    ((Regex, re.Pattern), ["regex"]),
    ((MaxKey,), ["maxKey"]),
]


def types_after(value: Any) -> list[str]:
    """The ``$type`` aliases of every BSON type that sorts after ``value``'s type."""
    position = next(n for n, (kinds, _) in enumerate(_TYPE_ORDER)
                    if isinstance(value, kinds) and (not isinstance(value, bool)
                                                     or bool in kinds))
    return [alias for _, aliases in _TYPE_ORDER[position + 1:] for alias in aliases]


class RawDocuments:
    """Catalog documents read as raw BSON: a change's size is its bytes' length, so no
    document is encoded again to measure it (the snapshot and the workers' chunks)."""

    def __init__(self, collection: MongoCollection) -> None:
        self.decode = document_codec(collection.codec_options)
        self.collection = collection.with_options(
            codec_options=self.decode.with_options(document_class=RawBSONDocument))

    def upserts(self, found: Iterable[RawBSONDocument], version: int,
                cluster_time: Timestamp) -> list[Change]:
        changes = []
        for raw in found:
            document = bson.decode(raw.raw, self.decode)
            changes.append(Change("upsert", document["_id"], version, cluster_time, document,
                                  id_problem(document["_id"]), len(raw.raw)))
        return changes


class Pace:
    """At most ``docs_per_s`` documents a second, on average since the first page: each
    page waits for its share of time (``stop`` ends a wait early; 0: no limit)."""

    def __init__(self, docs_per_s: float, stop: threading.Event) -> None:
        self.docs_per_s = docs_per_s
        self.stop = stop
        self.started: float | None = None
        self.taken = 0

    def wait(self, docs: int) -> None:
        if not self.docs_per_s:
            return
        now = time.monotonic()
        if self.started is None:
            self.started = now
        self.stop.wait(max(0.0, self.started + self.taken / self.docs_per_s - now))
        self.taken += docs


class SnapshotScan:
    """The collection's raw documents in ``_id`` order after a position, read through one
    cursor (a query per page would sort again for every page: the MongoDB stand-in sorts
    the whole collection for each, ~0.7 ms a document over a scan of 20k), with a second
    cursor for the types after the last id's when a scan resumes. Pages come back at the
    cursor's batch size, one round trip each."""

    def __init__(self, collection: MongoCollection, position: SnapshotPosition,
                 pace: Pace | None = None) -> None:
        self.documents = RawDocuments(collection)
        self.position = position
        self.pace = pace
        self.cursors: Iterator[Cursor[RawBSONDocument]] | None = None
        self.cursor: Cursor[RawBSONDocument] | None = None

    def take(self, limit: int) -> list[RawBSONDocument]:
        """The next ``limit`` documents at most (none: the scan is done), no sooner than
        the pace allows."""
        if self.pace is not None:
            self.pace.wait(limit)
        if self.cursors is None:
            self.cursors = self._cursors(limit)
        page: list[RawBSONDocument] = []
        while len(page) < limit:
            if self.cursor is None:
                self.cursor = next(self.cursors, None)
                if self.cursor is None:
                    break
            page.extend(islice(self.cursor, limit - len(page)))
            if len(page) < limit:  # this cursor is done
                self.cursor.close()
                self.cursor = None
        if page:
            self.position = SnapshotPosition(self.position.operation_time, page[-1]["_id"],
                                             self.position.documents + len(page))
        return page

    def _cursors(self, batch_size: int) -> Iterator[Cursor[RawBSONDocument]]:
        last, find = self.position.last_id, self.documents.collection.find
        if last is None and self.position.documents == 0:
            yield find({}, batch_size=batch_size).sort("_id", 1)
            return
        yield find({"_id": {"$gt": last}}, batch_size=batch_size).sort("_id", 1)
        later = types_after(last)  # {$gt: last} matched only ids of last's type
        if later:
            yield find({"_id": {"$type": later}}, batch_size=batch_size).sort("_id", 1)

    def close(self) -> None:
        if self.cursor is not None:
            self.cursor.close()
            self.cursor = None


class SnapshotSource:
    """The scan as a source: pages of upserts, resuming after ``position.last_id``."""

    def __init__(self, collection: MongoCollection, position: SnapshotPosition,
                 pace: Pace | None = None) -> None:
        self.scan = SnapshotScan(collection, position, pace)
        self.version = external_version(position.operation_time, 0)

    def poll(self, max_docs: int, max_bytes: int, max_wait_s: float) -> Batch:
        """The next page (``max_docs`` documents at most); ``last`` when the scan is done."""
        page = self.scan.take(max_docs)
        position = self.scan.position
        if not page:
            return Batch(position=position, last=True)
        changes = self.scan.documents.upserts(page, self.version, position.operation_time)
        return Batch(changes, position, watermark=None,
                     size_bytes=sum(change.size_bytes for change in changes))

    def close(self) -> None:
        self.scan.close()
