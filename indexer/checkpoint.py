"""Checkpoints in MongoDB: one per (source, target index).

The order is fixed and tested: flush the sink (every write of the batch acknowledged)
-> save the position. A crash between the two replays the batch, which the external
versions make harmless; the reverse order could skip it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bson.timestamp import Timestamp
from pymongo.collection import Collection

from indexer.source import Position


def backfill_state_id(index: str) -> str:
    """The document of a backfill's progress into ``index`` (same collection)."""
    return f"backfill|{index}"


class Checkpoints:
    def __init__(self, collection: Collection, source: str) -> None:
        self.collection = collection
        self.source = source

    def _id(self, index: str) -> str:
        return f"{self.source}|{index}"

    def load(self, index: str) -> Position | None:
        document = self.collection.find_one({"_id": self._id(index)})
        if document is None:
            return None
        return Position(document.get("token"), document.get("cluster_time"),
                        document.get("seq", 0))

    def save(self, index: str, position: Position, caught_up: bool = False) -> None:
        """``caught_up``: the stream was idle, so nothing is pending behind this position."""
        now = datetime.now(UTC)
        fields: dict[str, Any] = {"token": position.token, "cluster_time": position.cluster_time,
                                  "seq": position.seq, "updated_at": now}
        if caught_up:
            fields["caught_up_at"] = now
        self.collection.update_one({"_id": self._id(index)}, {"$set": fields}, upsert=True)

    def save_all(self, indices: list[str], position: Position, caught_up: bool = False) -> None:
        for index in indices:
            self.save(index, position, caught_up)

    def forget(self, index: str) -> None:
        """Drop an index's position and its backfill state: the index was deleted."""
        self.collection.delete_many({"_id": {"$in": [self._id(index), backfill_state_id(index)]}})

    def describe(self, index: str) -> dict[str, Any] | None:
        return self.collection.find_one({"_id": self._id(index)}, {"_id": 0, "token": 0})


def earliest(positions: list[Position]) -> Position:
    """Where one stream must start to serve every target: the oldest position.

    A target a little ahead sees some changes twice; its external versions drop them.
    """
    def key(position: Position) -> tuple[Timestamp, int]:
        return (position.cluster_time or Timestamp(0, 0), position.seq)

    oldest = min(positions, key=key)
    if any(p.token is None for p in positions):  # a fresh backfill: restart by time
        return Position(None, oldest.cluster_time, 0)
    return oldest


def lag_seconds(checkpoint: dict[str, Any], now: float) -> float | None:
    """How far behind the catalog an index is: 0-ish when the stream was last seen idle."""
    times = []
    if checkpoint.get("caught_up_at"):
        times.append(checkpoint["caught_up_at"].timestamp())
    if checkpoint.get("cluster_time"):
        times.append(checkpoint["cluster_time"].time)
    return round(now - max(times), 1) if times else None
