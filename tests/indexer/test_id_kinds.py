"""A catalog's one kind of _id: decided by most of its ids, recorded once for every
process, kept when the catalog changes afterwards."""

from __future__ import annotations

import bson
from pymongo.database import Database

from indexer.id_kinds import CatalogIdKind


def test_the_kind_most_ids_have_is_recorded_once_for_every_process(
        mongo_db: Database) -> None:
    items, checkpoints = mongo_db["items"], mongo_db["checkpoints"]
    items.insert_many([{"_id": n} for n in range(5)] + [{"_id": bson.Int64(2**40)},
                      {"_id": "a"}, {"_id": bson.ObjectId()}])
    first = CatalogIdKind(checkpoints, items)
    assert first.problem(3) is None  # integers are most of the catalog
    assert first.problem("a") is not None and first.problem(bson.ObjectId()) is not None
    items.insert_many([{"_id": f"s{n}"} for n in range(20)])  # strings are most now
    later = CatalogIdKind(checkpoints, items)  # another process: the recorded kind holds
    assert later.problem(7) is None
    assert (later.problem("7") or "").startswith("_id: string id in a catalog of integer ids")


def test_an_empty_catalog_takes_the_first_ids_kind(mongo_db: Database) -> None:
    ids = CatalogIdKind(mongo_db["checkpoints"], mongo_db["items"])
    oid = bson.ObjectId()
    assert ids.problem(oid) is None
    assert (ids.problem(str(oid)) or "").endswith(
        "an _id of the catalog's kind (objectid); README: Item ids")
