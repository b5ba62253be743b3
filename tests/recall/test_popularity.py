"""Measured popularity on a real MongoDB: batches folded on the server in any order give
the same decayed counts; the window is relative to the newest event."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from pymongo import MongoClient

from esrec.settings import Settings
from recall.popularity import DAY_S, Popularity
from recall.state import UserEvent

START = datetime(2016, 1, 1, tzinfo=UTC)


def _event(n: int, item: str, days: float) -> UserEvent:
    return UserEvent(event_id=f"e{n}", user_id=f"u{n}", item_id=item, type="view",
                     ts=START + timedelta(days=days))


@pytest.fixture
def popularity(settings: Settings, mongo_client: MongoClient) -> Popularity:
    db = mongo_client[settings.mongo.database]
    return Popularity(db, settings)


def test_batches_in_any_order_fold_to_the_same_decayed_counts(popularity: Popularity) -> None:
    half_life = popularity.half_life_s / DAY_S
    a_days = [0.0, 1.0, 2.5, 9.0]
    events = [_event(n, "a", d) for n, d in enumerate(a_days)] + [_event(9, "b", 9.0)]
    popularity.count([events[3], events[4]])  # the newest first, then the older ones
    popularity.count(events[:1])
    popularity.count(events[1:3])
    top = popularity.top()
    now = 9.0
    expected_a = sum(0.5 ** ((now - d) / half_life) for d in a_days)
    assert top.newest == (START + timedelta(days=9)).timestamp()
    assert [item for item, _ in top.items] == ["a", "b"]
    assert top.by_id["a"] == pytest.approx(expected_a, rel=1e-9)
    assert top.by_id["b"] == pytest.approx(1.0, rel=1e-9)
    assert math.isfinite(top.by_id["a"])


def test_the_window_is_relative_to_the_newest_event(popularity: Popularity) -> None:
    window = popularity.window_s / DAY_S
    popularity.count([_event(0, "old", 0.0), _event(1, "old", 0.1), _event(2, "new",
                                                                       window + 5)])
    assert [item for item, _ in popularity.top().items] == ["new"]  # "old" is out
