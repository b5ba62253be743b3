"""A catalog's one kind of _id: decided by most of its ids, recorded once for every
process, kept when the catalog changes afterwards."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import bson
from pymongo import MongoClient
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


def test_processes_that_start_together_all_read_the_one_recorded_kind(
        mongo_db: Database, mongo_url: str) -> None:
    """Workers of a group meet their first change at once: every one of them reads the
    kind that won (the MongoDB stand-in answers an upsert that lost the race with no
    document, which once crashed a worker)."""
    clients = [MongoClient(mongo_url, tz_aware=True) for _ in range(4)]
    try:
        for trial in range(15):
            items = f"items{trial}"
            ids = [CatalogIdKind(c[mongo_db.name]["checkpoints"], c[mongo_db.name][items])
                   for c in clients]
            firsts = [trial, str(trial), bson.ObjectId(), trial]  # an empty catalog
            with ThreadPoolExecutor(len(ids)) as pool:
                problems = list(pool.map(CatalogIdKind.problem, ids, firsts))
            recorded = {i.kind for i in ids}
            assert len(recorded) == 1, recorded
            assert sum(p is None for p in problems) >= 1
    finally:
        for client in clients:
            client.close()
