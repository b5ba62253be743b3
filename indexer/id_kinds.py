"""One catalog, one kind of ``_id``.

An item is indexed, named in user events and returned by recall under the text of its
``_id`` (indexer.changes.es_id). The texts of ids of two kinds can be equal: 1 and "1",
ObjectId("5f...") and "5f...". In a catalog that mixed them, two documents would land on
one Elasticsearch document and overwrite each other without a word. So the catalog's
kind (string, integer or objectid) is recorded beside the checkpoints the first time
any process indexes it: the kind most of its ids have (counted on the _id index by BSON type), or
the first id's in an empty catalog. A change whose id is of another kind is parked with
the reason and the fix, and the stage goes on (see README, "Item ids").
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any, Protocol

from pymongo.errors import DuplicateKeyError

from indexer.changes import id_kind
from runtime.clients import MongoCollection
from runtime.errors import Unavailable

# each kind's BSON types, in the order a tie is settled
BSON_TYPES = {"string": ["string"], "objectid": ["objectId"], "integer": ["int", "long"]}


class IdKinds(Protocol):
    def problem(self, doc_id: Any) -> str | None:
        """Why ``doc_id`` cannot join this catalog's index, or None if it can."""


def kind_record_id(catalog: str) -> str:
    return f"id-kind|{catalog}"


class CatalogIdKind:
    """The kind recorded for one catalog collection, kept in ``collection``."""

    def __init__(self, collection: MongoCollection, items: MongoCollection,
                 kind: str | None = None) -> None:
        self.collection = collection
        self.items = items
        self.kind = kind  # read once (a recorded kind never changes); given: never read

    def problem(self, doc_id: Any) -> str | None:
        kind = id_kind(doc_id)
        expected = self.kind or self._record(kind)
        if kind == expected:
            return None
        return (f"_id: {kind} id in a catalog of {expected} ids: Elasticsearch ids are the "
                f"ids' text, so {doc_id!r} would overwrite the {expected} id "
                f"{str(doc_id)!r}; give this document an _id of the catalog's kind "
                f"({expected}); README: Item ids")

    def _record(self, first: str) -> str:
        """The recorded kind, recording the catalog's if none is (atomic: one wins a race)."""
        key = {"_id": kind_record_id(self.items.name)}
        record = self.collection.find_one(key)
        if record is not None:
            self.kind = str(record["kind"])
            return self.kind
        counts = {kind: self.items.count_documents({"_id": {"$type": types}})
                  for kind, types in BSON_TYPES.items()}
        kind = max(counts, key=lambda k: counts[k]) if any(counts.values()) else first
        # insert-if-absent, then read what won: a process that lost the race reads the
        # winner's kind (an upsert that loses a race raises DuplicateKeyError on MongoDB
        # and answers no document on the stand-in; this form needs neither answer)
        with contextlib.suppress(DuplicateKeyError):
            self.collection.update_one(key, {"$setOnInsert": {
                "kind": kind, "counts": counts, "since": datetime.now(UTC)}}, upsert=True)
        record = self.collection.find_one(key)
        if record is None:
            raise Unavailable(f"the recorded _id kind of {self.items.name} could not be read "
                              "back after it was written", "check that MongoDB answers reads "
                              "from the primary")
        self.kind = str(record["kind"])
        return self.kind
