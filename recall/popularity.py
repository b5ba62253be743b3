"""Measured popularity: decayed counts of user events per item, kept by the events consumer,
over everyone and within each user cluster of a model version.

    item_popularity:    {_id: item_id, k: log2(sum over events of 2 ** (ts / half_life)),
                         last: newest event ts (epoch s), n: events}
    cluster_popularity: {_id: "lineage|cluster|item", lineage, cluster, item, k, last, n}

``k`` is a log-sum-exp in base 2, so it does not depend on the order events arrive in
(several consumers, replays of old logs) and one atomic pipeline update per key and
batch folds a batch in; it never overflows and never needs rebasing. At a time ``now``
a decayed count is ``2 ** (k - now / half_life)``; every key shares ``now``, so the keys
sorted by ``k`` are the keys sorted by popularity at any moment.

"Now" is the newest event seen, not the wall clock, and the window (``hot_window_days``)
is relative to it: a replayed log (MovieLens from the 2010s) has hot items too. Counted
only for events applied to user state for the first time, after that write: a replay
never counts twice. The events consumer folds in memory and writes every
``popularity_flush_s``: a crash loses at most that long's counts.
A cluster's counts are keyed by the lineage of the centroids that assigned the user (the
model version and the k-means build, ``ClusterSet.lineage``): centroids of version V
only ever meet vectors of version V, and so do their counts; a rebuild starts afresh.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo import ASCENDING, DESCENDING, UpdateOne

from recall.settings import RecallConfig, RecallSettings
from recall.state import UserEvent
from runtime.clients import MongoCollection, MongoDatabase

DAY_S = 86_400.0
Fold = tuple[float, float, int]  # (k, last, n)


def _logaddexp2(a: float, b: float) -> float:
    high, low = max(a, b), min(a, b)
    return high + math.log2(1.0 + 2.0 ** (low - high))


def fold(keyed_times: Iterable[tuple[str, float]], half_life_s: float,
         into: dict[str, Fold] | None = None) -> dict[str, Fold]:
    """Events (key, epoch seconds) folded into one (k, last, n) per key (into ``into``:
    folds not written yet)."""
    folds: dict[str, Fold] = {} if into is None else into
    for key, ts in keyed_times:
        x = ts / half_life_s
        k, last, n = folds.get(key, (x, ts, 0))
        folds[key] = (_logaddexp2(k, x) if n else x, max(last, ts), n + 1)
    return folds


def _update(key: str, values: Fold, fields: Mapping[str, Any]) -> UpdateOne:
    """k := logaddexp2(k, batch k) on the server, atomically per key."""
    k, last, n = values
    old: dict[str, Any] = {"$ifNull": ["$k", k]}
    high, low = {"$max": [old, k]}, {"$min": [old, k]}
    merged = {"$add": [high, {"$log": [{"$add": [1, {"$pow": [
        2, {"$subtract": [low, high]}]}]}, 2]}]}
    return UpdateOne({"_id": key}, [{"$set": {
        **{name: {"$literal": value} for name, value in fields.items()},
        "k": {"$cond": [{"$eq": [{"$type": "$k"}, "missing"]}, k, merged]},
        "last": {"$max": [{"$ifNull": ["$last", last]}, last]},
        "n": {"$add": [{"$ifNull": ["$n", 0]}, n]}}}], upsert=True)


@dataclass
class Popular:
    """The most popular items now, best first, with their decayed counts."""

    items: list[tuple[str, float]]
    newest: float | None  # the newest event's time: what "now" means here
    by_id: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        self.by_id = dict(self.items)


class _Counts:
    """Decayed counts in one collection. ``flush_s`` > 0 folds events in memory, and
    ``flush_due`` writes them at most that often (one update per key for every event
    since): the events consumer's way, fewer writes for the same counts; a crash then
    loses at most that long's counts. 0: every ``count`` writes at once."""

    def __init__(self, collection: MongoCollection, recall: RecallSettings,
                 flush_s: float = 0.0) -> None:
        self.collection = collection
        self.half_life_s = recall.popularity_half_life_days * DAY_S
        self.window_s = recall.hot_window_days * DAY_S
        self.top_n = recall.popularity_top
        self.flush_s = flush_s
        self._indexed = False
        self._pending: dict[str, Fold] = {}
        self._next_flush = time.monotonic() + flush_s

    def _add(self, keyed_times: Iterable[tuple[str, float]]) -> int:
        """Fold events in (written at once without ``flush_s``); returns the pending keys."""
        fold(keyed_times, self.half_life_s, self._pending)
        pending = len(self._pending)
        if not self.flush_s:
            self.flush()
        return pending

    def flush_due(self) -> int:
        """Write the pending folds if ``flush_s`` has passed since the last write."""
        return self.flush() if time.monotonic() >= self._next_flush else 0

    def flush(self) -> int:
        """Write every pending fold (kept for the next flush if the write fails)."""
        pending = self._pending
        if pending:
            self._ensure_indexes()
            self.collection.bulk_write([_update(key, values, self._fields(key))
                                        for key, values in pending.items()], ordered=False)
            self._pending = {}
        self._next_flush = time.monotonic() + self.flush_s
        return len(pending)

    def _fields(self, key: str) -> dict[str, Any]:
        """What a key's document holds besides the counts."""
        return {}

    def _ensure_indexes(self) -> None:
        if not self._indexed:
            for keys in self._indexes():
                self.collection.create_index(keys)
            self._indexed = True

    def _indexes(self) -> list[list[tuple[str, int]]]:
        return [[("k", DESCENDING)], [("last", DESCENDING)]]

    def _top(self, query: dict[str, Any], now: float, item: str) -> Popular:
        cursor = self.collection.find({**query, "last": {"$gte": now - self.window_s}},
                                      {"k": 1, item: 1}, sort=[("k", DESCENDING)],
                                      limit=self.top_n)
        scale = now / self.half_life_s
        return Popular([(str(doc[item]), 2.0 ** (float(doc["k"]) - scale)) for doc in cursor],
                       now)


class Popularity(_Counts):
    """Every user's events, per item: the ``hot`` channel and i2i's re-weighting."""

    def __init__(self, db: MongoDatabase, settings: RecallConfig, flush_s: float = 0.0) -> None:
        super().__init__(db[settings.mongo.collections.item_popularity], settings.recall,
                         flush_s)

    def count(self, events: Sequence[UserEvent]) -> int:
        """Fold events into their items' counts (one update per item, when written)."""
        return self._add((event.item_id, event.ts.timestamp()) for event in events)

    def top(self) -> Popular:
        """The ``popularity_top`` items with an event in the window before the newest
        event, by decayed count now (two indexed reads)."""
        newest = self.collection.find_one({}, {"last": 1}, sort=[("last", DESCENDING)])
        if newest is None:
            return Popular([], None)
        return self._top({}, float(newest["last"]), "_id")


class ClusterPopularity(_Counts):
    """Events per item within each user cluster of a model version: the ``cluster``
    channel. The acting user's cluster is the one their vector falls in when the event is
    applied."""

    def __init__(self, db: MongoDatabase, settings: RecallConfig, flush_s: float = 0.0) -> None:
        super().__init__(db[settings.mongo.collections.cluster_popularity], settings.recall,
                         flush_s)

    def _indexes(self) -> list[list[tuple[str, int]]]:
        return [[("lineage", ASCENDING), ("cluster", ASCENDING), ("k", DESCENDING)],
                [("lineage", ASCENDING), ("last", DESCENDING)]]

    def count(self, lineage: str, assigned: Iterable[tuple[int, str, float]]) -> int:
        """Fold (cluster, item id, epoch seconds) events under a clustering ``lineage``
        (one update per cluster and item, when written)."""
        return self._add((f"{lineage}|{cluster}|{item}", ts) for cluster, item, ts in assigned)

    def _fields(self, key: str) -> dict[str, Any]:
        lineage, cluster, item = key.rsplit("|", 2)
        return {"lineage": lineage, "cluster": int(cluster), "item": item}

    def top(self, lineage: str, cluster: int) -> Popular:
        """Cluster ``cluster`` of a ``lineage``: its popular items in the window before
        the lineage's newest event (two indexed reads)."""
        newest = self.collection.find_one({"lineage": lineage}, {"last": 1},
                                          sort=[("last", DESCENDING)])
        if newest is None:
            return Popular([], None)
        return self._top({"lineage": lineage, "cluster": cluster}, float(newest["last"]),
                         "item")
