"""The snapshot source: a backfill's scan of the collection, with the stream's contract.

    T = the cluster's operation time when the backfill starts (kept in its state)
    poll() -> the next page of documents by _id, each as an upsert with version (T, 0)
    position = (T, last _id handed out, count): saved like a stream position, in order

No snapshot read is needed: a document scanned after a later change carries newer
content under the older version T, and the streamed change (version > T) rewrites it.

Paging by ``_id`` must cross BSON types: a query ``{_id: {$gt: x}}`` matches only ids of
x's type (type bracketing), so when a page runs out inside one type the scan goes on
with every type that sorts after it (``$type``), in the server's own sort order.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Mapping
from typing import Any

import bson
from bson.codec_options import CodecOptions
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.raw_bson import RawBSONDocument
from bson.regex import Regex
from bson.timestamp import Timestamp

from indexer.changes import Batch, Change, SnapshotPosition, id_problem
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
        options = collection.codec_options
        self.collection = collection.with_options(codec_options=CodecOptions(
            document_class=RawBSONDocument, tz_aware=options.tz_aware, tzinfo=options.tzinfo))
        self.decode = options.with_options(document_class=dict)

    def upserts(self, found: Iterable[RawBSONDocument], version: int,
                cluster_time: Timestamp) -> list[Change]:
        changes = []
        for raw in found:
            document = bson.decode(raw.raw, self.decode)
            changes.append(Change("upsert", document["_id"], version, cluster_time, document,
                                  id_problem(document["_id"]), len(raw.raw)))
        return changes


class SnapshotSource:
    """Pages of the collection in ``_id`` order, resuming after ``position.last_id``."""

    def __init__(self, collection: MongoCollection, position: SnapshotPosition,
                 fields: Mapping[str, Any] | None = None) -> None:
        self.documents = RawDocuments(collection)
        self.position = position
        self.fields = fields  # a projection: a distributed build needs only the ids
        self.version = external_version(position.operation_time, 0)

    def poll(self, max_docs: int, max_bytes: int, max_wait_s: float) -> Batch:
        """The next page (``max_docs`` documents at most); ``last`` when the scan is done."""
        page = self._page(max_docs)
        if not page:
            return Batch(position=self.position, last=True)
        time_t = self.position.operation_time
        changes = self.documents.upserts(page, self.version, time_t)
        self.position = SnapshotPosition(time_t, changes[-1].doc_id,
                                         self.position.documents + len(page))
        return Batch(changes, self.position, watermark=None,
                     size_bytes=sum(change.size_bytes for change in changes))

    def _page(self, limit: int) -> list[RawBSONDocument]:
        last, find = self.position.last_id, self.documents.collection.find
        if last is None and self.position.documents == 0:
            return list(find({}, self.fields).sort("_id", 1).limit(limit))
        page = list(find({"_id": {"$gt": last}}, self.fields).sort("_id", 1).limit(limit))
        if len(page) < limit:  # this type's ids are done: the types after it
            later = types_after(page[-1]["_id"] if page else last)
            if later:
                page += find({"_id": {"$type": later}}, self.fields).sort("_id", 1).limit(
                    limit - len(page))
        return page

    def close(self) -> None:
        """Nothing to release: every page is its own query."""
