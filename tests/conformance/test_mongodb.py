"""MongoDB change-stream features the indexer relies on."""

from __future__ import annotations

import pytest
from pymongo.database import Database
from pymongo.errors import OperationFailure

AWAIT_MS = 200


def _drain(stream, count: int) -> list[dict]:  # type: ignore[no-untyped-def]
    events: list[dict] = []
    for _ in range(count * 20):
        event = stream.try_next()
        if event is not None:
            events.append(event)
            if len(events) == count:
                break
    return events


def test_server_is_a_replica_set_member(mongo_db: Database) -> None:
    assert "setName" in mongo_db.client.admin.command("hello")


def test_change_stream_with_update_lookup(mongo_db: Database) -> None:
    items = mongo_db.items
    with items.watch(full_document="updateLookup", max_await_time_ms=AWAIT_MS) as stream:
        items.insert_one({"_id": 1, "title": "a", "tags": ["x"]})
        items.update_one({"_id": 1}, {"$set": {"title": "b"}})
        events = _drain(stream, 2)
        items.replace_one({"_id": 1}, {"title": "c"})
        items.delete_one({"_id": 1})
        events += _drain(stream, 2)
    assert [e["operationType"] for e in events] == ["insert", "update", "replace", "delete"]
    assert events[0]["fullDocument"] == {"_id": 1, "title": "a", "tags": ["x"]}
    assert events[1]["updateDescription"]["updatedFields"] == {"title": "b"}
    assert events[1]["fullDocument"]["title"] == "b"
    assert events[2]["fullDocument"] == {"_id": 1, "title": "c"}
    assert events[3]["documentKey"] == {"_id": 1}
    assert "fullDocument" not in events[3] or events[3]["fullDocument"] is None
    times = [e["clusterTime"] for e in events]
    assert times == sorted(times)


def test_update_lookup_of_a_deleted_document_is_null(mongo_db: Database) -> None:
    """The lookup reads the current document: gone by then means null, not the old one."""
    items = mongo_db.items
    with items.watch(full_document="updateLookup", max_await_time_ms=AWAIT_MS) as stream:
        items.insert_one({"_id": 1, "title": "a"})
        items.update_one({"_id": 1}, {"$set": {"title": "b"}})
        items.delete_one({"_id": 1})
        events = _drain(stream, 3)
    assert events[1]["operationType"] == "update"
    assert events[1]["fullDocument"] is None


def test_resume_after_replays_exactly_what_follows(mongo_db: Database) -> None:
    items = mongo_db.items
    with items.watch(max_await_time_ms=AWAIT_MS) as stream:
        items.insert_many([{"_id": i} for i in range(5)])
        events = _drain(stream, 5)
    token = events[1]["_id"]
    with items.watch(resume_after=token, max_await_time_ms=AWAIT_MS) as stream:
        resumed = _drain(stream, 3)
    assert [e["documentKey"]["_id"] for e in resumed] == [2, 3, 4]


def test_start_at_operation_time(mongo_db: Database) -> None:
    items = mongo_db.items
    items.insert_one({"_id": "before"})
    with mongo_db.client.start_session() as session:
        items.insert_one({"_id": "at"}, session=session)
        start = session.operation_time
    items.insert_one({"_id": "after"})
    with items.watch(start_at_operation_time=start, max_await_time_ms=AWAIT_MS) as stream:
        seen = [e["documentKey"]["_id"] for e in _drain(stream, 2)]
    assert seen == ["at", "after"]


def test_transaction_events_share_a_cluster_time(mongo_db: Database) -> None:
    items = mongo_db.items
    items.insert_one({"_id": "seed"})  # collections cannot be created inside a transaction
    with items.watch(max_await_time_ms=AWAIT_MS) as stream:
        with mongo_db.client.start_session() as session, session.start_transaction():
            items.insert_one({"_id": "t1"}, session=session)
            items.update_one({"_id": "t1"}, {"$set": {"n": 2}}, session=session)
        events = _drain(stream, 2)
    assert [e["operationType"] for e in events] == ["insert", "update"]
    assert events[0]["clusterTime"] == events[1]["clusterTime"]
    assert events[0]["txnNumber"] == events[1]["txnNumber"]
    assert events[0]["_id"] != events[1]["_id"]


def test_idle_stream_resume_token_keeps_moving(mongo_db: Database) -> None:
    """The post-batch resume token advances with the oplog even when our collection is quiet."""
    with mongo_db.items.watch(max_await_time_ms=AWAIT_MS) as stream:
        assert stream.try_next() is None
        before = stream.resume_token
        mongo_db.elsewhere.insert_one({"x": 1})
        for _ in range(10):
            assert stream.try_next() is None
            if stream.resume_token != before:
                break
        assert stream.resume_token != before


def test_invalid_resume_token_fails_loudly(mongo_db: Database) -> None:
    with pytest.raises(OperationFailure):  # noqa: SIM117
        with mongo_db.items.watch(resume_after={"_data": "00"}) as stream:
            stream.try_next()
