"""Measured popularity: decayed counts of user events per item, kept by the events consumer.

    item_popularity: {_id: item_id, k: log2(sum over events of 2 ** (ts / half_life)),
                      last: newest event ts (epoch s), n: events}

``k`` is a log-sum-exp in base 2, so it does not depend on the order events arrive in
(several consumers, replays of old logs) and one atomic pipeline update per item and
batch folds a batch in; it never overflows and never needs rebasing. At a time ``now``
an item's decayed count is ``2 ** (k - now / half_life)``; every item shares ``now``, so
the items sorted by ``k`` are the items sorted by popularity at any moment.

"Now" is the newest event seen, not the wall clock, and the window (``hot_window_days``)
is relative to it: a replayed log (MovieLens from the 2010s) has hot items too. Counted
only for events applied to user state for the first time, after that write: a replay
never counts twice; a crash between the two writes loses at most one batch's counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo import DESCENDING, UpdateOne

from recall.settings import RecallConfig
from recall.state import UserEvent
from runtime.clients import MongoCollection, MongoDatabase

DAY_S = 86_400.0


def _logaddexp2(a: float, b: float) -> float:
    high, low = max(a, b), min(a, b)
    return high + math.log2(1.0 + 2.0 ** (low - high))


@dataclass
class Popular:
    """The most popular items now, best first, with their decayed counts."""

    items: list[tuple[str, float]]
    newest: float | None  # the newest event's time: what "now" means here
    by_id: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        self.by_id = dict(self.items)


class Popularity:
    def __init__(self, db: MongoDatabase, settings: RecallConfig) -> None:
        self.collection: MongoCollection = db[settings.mongo.collections.item_popularity]
        recall = settings.recall
        self.half_life_s = recall.popularity_half_life_days * DAY_S
        self.window_s = recall.hot_window_days * DAY_S
        self.top_n = recall.popularity_top
        self._indexed = False

    def count(self, events: Sequence[UserEvent]) -> int:
        """Fold events into their items' counts: one update per item. Returns the items."""
        if not events:
            return 0
        batch: dict[str, tuple[float, float, int]] = {}  # item -> (k, last, n)
        for event in events:
            ts = event.ts.timestamp()
            x = ts / self.half_life_s
            k, last, n = batch.get(event.item_id, (x, ts, 0))
            batch[event.item_id] = (_logaddexp2(k, x) if n else x, max(last, ts), n + 1)
        self._ensure_indexes()
        self.collection.bulk_write([self._fold(item, *values)
                                    for item, values in batch.items()], ordered=False)
        return len(batch)

    @staticmethod
    def _fold(item_id: str, k: float, last: float, n: int) -> UpdateOne:
        """k := logaddexp2(k, batch k) on the server, atomically per item."""
        old: dict[str, Any] = {"$ifNull": ["$k", k]}
        high, low = {"$max": [old, k]}, {"$min": [old, k]}
        merged = {"$add": [high, {"$log": [{"$add": [1, {"$pow": [
            2, {"$subtract": [low, high]}]}]}, 2]}]}
        return UpdateOne({"_id": item_id}, [{"$set": {
            "k": {"$cond": [{"$eq": [{"$type": "$k"}, "missing"]}, k, merged]},
            "last": {"$max": [{"$ifNull": ["$last", last]}, last]},
            "n": {"$add": [{"$ifNull": ["$n", 0]}, n]}}}], upsert=True)

    def _ensure_indexes(self) -> None:
        if not self._indexed:
            self.collection.create_index([("k", DESCENDING)])
            self.collection.create_index([("last", DESCENDING)])
            self._indexed = True

    def top(self) -> Popular:
        """The ``popularity_top`` items with an event in the window before the newest
        event, by decayed count now (two indexed reads)."""
        newest = self.collection.find_one({}, {"last": 1}, sort=[("last", DESCENDING)])
        if newest is None:
            return Popular([], None)
        now = float(newest["last"])
        cursor = self.collection.find({"last": {"$gte": now - self.window_s}}, {"k": 1},
                                      sort=[("k", DESCENDING)], limit=self.top_n)
        scale = now / self.half_life_s
        return Popular([(str(doc["_id"]), 2.0 ** (float(doc["k"]) - scale))
                        for doc in cursor], now)
