"""Recall's side of a canary: which user events count as clicks of which arm."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from indexer.canary_store import ArmCounts, Canary
from recall.canary import ClickCounter
from recall.state import UserEvent

START = datetime(2026, 6, 1, 12, tzinfo=UTC)


class Store:
    """The two calls ClickCounter makes of a CanaryStore, kept in memory."""

    def __init__(self, canary: Canary | None) -> None:
        self.canary = canary
        self.added: dict[str, int] = {}

    def current(self) -> Canary | None:
        return self.canary

    def add(self, canary_id: str, arm: str, counts: ArmCounts) -> None:
        self.added[arm] = self.added.get(arm, 0) + counts.clicks


def _event(n: int, model: str | None, type_: Any = "click",
           at: datetime = START + timedelta(seconds=5)) -> UserEvent:
    return UserEvent(event_id=f"e{n}", user_id="u1", item_id=f"i{n}", type=type_, ts=at,
                     request_id="r1" if model else None, model=model)


def _running() -> Canary:
    return Canary("c1", "m@2", "m@1", "i2", 0.2, "running", START,
                  datetime.now(UTC) + timedelta(hours=1),
                  datetime.now(UTC) + timedelta(hours=2))


def test_engagements_naming_an_arms_version_count_as_its_clicks() -> None:
    store = Store(_running())
    counted = ClickCounter(store).count([  # type: ignore[arg-type]
        _event(1, "m@2"), _event(2, "m@1"), _event(3, "m@1", "purchase"),
        _event(4, "m@1", "view"),  # a view is no engagement
        _event(5, None),  # not from a recall answer
        _event(6, "m@0")])  # neither arm's version
    assert counted == 3 and store.added == {"candidate": 1, "baseline": 2}


def test_clicks_made_before_the_canary_began_are_not_counted() -> None:
    """The baseline's clicks still queued from before the split must not raise its
    click-through: the candidate has none queued."""
    store = Store(_running())
    before = START - timedelta(seconds=1)
    counted = ClickCounter(store).count([  # type: ignore[arg-type]
        _event(1, "m@1", at=before), _event(2, "m@1", at=before), _event(3, "m@1"),
        _event(4, "m@2")])
    assert counted == 2 and store.added == {"candidate": 1, "baseline": 1}


def test_nothing_is_counted_without_a_running_canary() -> None:
    ended = Canary(**{**_running().__dict__, "state": "promoted"})
    for store in (Store(None), Store(ended)):
        assert ClickCounter(store).count([_event(1, "m@1")]) == 0  # type: ignore[arg-type]
        assert store.added == {}
