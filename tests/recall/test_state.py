"""User state on a real MongoDB: one update per user and batch, each event applied once
whatever the batch it comes back in, and a refusal that names the events it concerns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pymongo import MongoClient
from pymongo.database import Database

from esrec.settings import Settings
from recall.state import UserEvent, UserStates

START = datetime(2026, 3, 1, tzinfo=UTC)


def _event(user: str, n: int, item: str | None = None) -> UserEvent:
    return UserEvent(event_id=f"{user}-e{n}", user_id=user, item_id=item or f"i{n}",
                     type="click", ts=START + timedelta(seconds=n))


@pytest.fixture
def db(settings: Settings, mongo_client: MongoClient) -> Database:
    return mongo_client[settings.mongo.database]


@pytest.fixture
def states(settings: Settings, db: Database) -> UserStates:
    db[settings.mongo.collections.items].insert_many(
        [{"_id": f"i{n}", "tags": [f"t{n % 3}"]} for n in range(20)])
    return UserStates(db, settings)


def _state(db: Database, settings: Settings, user: str) -> dict:
    found = db[settings.mongo.collections.user_state].find_one({"_id": user})
    assert found is not None
    return found


def test_a_batch_of_several_users_is_applied_once_each(states: UserStates, db: Database,
                                                      settings: Settings) -> None:
    batch = [_event("a", 0), _event("b", 1), _event("a", 2), _event("a", 3), _event("b", 4)]
    applied = states.apply(batch)
    assert (applied.applied, applied.duplicates, applied.refused) == (5, 0, [])
    assert [event.event_id for event in applied.new] == [e.event_id for e in batch if
                                                         e.user_id == "a"] + ["b-e1", "b-e4"]
    a = _state(db, settings, "a")
    assert [entry["item_id"] for entry in a["recent"]] == ["i3", "i2", "i0"]  # newest first
    assert a["recent"][0]["tags"] == ["t0"]
    assert a["seen_items"] == ["i0", "i2", "i3"]
    again = states.apply(batch)  # the whole batch replayed
    assert (again.applied, again.duplicates, again.new) == (0, 5, [])
    assert _state(db, settings, "a")["recent"] == a["recent"]


def test_a_partly_replayed_batch_applies_exactly_the_new_events(
        states: UserStates, db: Database, settings: Settings) -> None:
    states.apply([_event("a", 0), _event("a", 1)])
    # after a crash the consumer reads the old events again, together with new ones
    applied = states.apply([_event("a", 0), _event("a", 1), _event("a", 2), _event("c", 5)])
    assert sorted(event.event_id for event in applied.new) == ["a-e2", "c-e5"]
    assert (applied.applied, applied.duplicates) == (2, 2)
    recent = [entry["item_id"] for entry in _state(db, settings, "a")["recent"]]
    assert recent == ["i2", "i1", "i0"]  # nothing twice


def test_the_same_event_twice_in_one_batch_counts_once(states: UserStates, db: Database,
                                                       settings: Settings) -> None:
    applied = states.apply([_event("a", 0), _event("a", 0), _event("a", 1, "i0")])
    assert (applied.applied, applied.duplicates) == (2, 1)
    assert _state(db, settings, "a")["seen_items"] == ["i0"]  # a repeat is one seen item


def test_a_refused_update_names_each_of_the_users_events(states: UserStates, db: Database,
                                                         settings: Settings) -> None:
    # a state MongoDB cannot $push into (written by something else): refused for good
    db[settings.mongo.collections.user_state].insert_one({"_id": "broken", "recent": "x"})
    applied = states.apply([_event("broken", 0), _event("ok", 1), _event("broken", 2)])
    assert [event.event_id for event in applied.new] == ["ok-e1"]
    assert sorted(event.event_id for event, _ in applied.refused) == ["broken-e0",
                                                                      "broken-e2"]
    assert all("MongoDB refused the update" in why for _, why in applied.refused)
