"""Checkpoints in MongoDB: a stream position per (source, target index), and the state of
each index's backfill. Nothing else touches the checkpoint collection.

The order is fixed and tested: flush the sink (every write of the batch acknowledged)
-> save the position. A crash between the two replays the batch, which the external
versions make harmless; the reverse order could skip it.

Lag is measured on the server's clock: a saved position carries its watermark (the
cluster time up to which the index holds everything) and whether the stream was idle
behind it; lag is the server's time now minus the watermark, and 0 while an idle
confirmation is fresh (within ``CAUGHT_UP_WITHIN_S``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bson.timestamp import Timestamp

from indexer.changes import Position, SnapshotPosition
from runtime.clients import MongoCollection

# a few idle heartbeats (source.HEARTBEAT_S): an idle confirmation older than this no
# longer proves the index is caught up; a position saved longer ago than FOLLOWED_WITHIN_S
# (host clocks, NTP-close) means no daemon is writing this index
CAUGHT_UP_WITHIN_S = 5.0
FOLLOWED_WITHIN_S = 15.0


def lag_seconds(watermark: Timestamp | None, idle: bool, server_now: Timestamp) -> float | None:
    """How far behind the newest change in MongoDB an index is (None: never written)."""
    if watermark is None:
        return None
    behind = max(0.0, float(server_now.time - watermark.time))
    return 0.0 if idle and behind <= CAUGHT_UP_WITHIN_S else behind


@dataclass(frozen=True)
class Progress:
    """A checkpoint as status and the gates read it."""

    cluster_time: Timestamp | None
    watermark: Timestamp | None
    idle: bool
    saved_at: datetime | None

    def lag_s(self, server_now: Timestamp) -> float | None:
        return lag_seconds(self.watermark, self.idle, server_now)

    def followed(self, now: datetime) -> bool:
        """A daemon saved this position within FOLLOWED_WITHIN_S (idle streams save once a
        heartbeat, busy ones once a batch)."""
        return self.saved_at is not None and (
            now - self.saved_at).total_seconds() <= FOLLOWED_WITHIN_S


def backfill_state_id(index: str) -> str:
    return f"backfill|{index}"


class Checkpoints:
    def __init__(self, collection: MongoCollection, source: str) -> None:
        self.collection = collection
        self.source = source

    def _id(self, index: str) -> str:
        return f"{self.source}|{index}"

    # -- stream positions --------------------------------------------------------------

    def load(self, index: str) -> Position | None:
        document = self.collection.find_one({"_id": self._id(index)})
        if document is None:
            return None
        return Position(document.get("token"), document.get("cluster_time"),
                        document.get("seq", 0), document.get("stream"))

    def started(self, indices: Iterable[str]) -> set[str]:
        """Which of ``indices`` have a position (``load`` is not None), in one query."""
        ids = {self._id(index): index for index in indices}
        return {ids[document["_id"]] for document in self.collection.find(
            {"_id": {"$in": list(ids)}}, {"_id": 1})}

    def save(self, index: str, position: Position, watermark: Timestamp | None = None,
             idle: bool = False) -> None:
        """A running indexer's save: ``watermark``: everything up to this cluster time is
        indexed; ``idle``: the stream was empty behind the position. The watermark never
        moves back: a daemon that takes on a freshly built index restarts its stream from
        the others' older position, and what it reads again there the new index holds."""
        fields: dict[str, Any] = {"token": position.token, "cluster_time": position.cluster_time,
                                  "seq": position.seq, "stream": position.stream,
                                  "idle": idle, "updated_at": datetime.now(UTC)}
        update: dict[str, Any] = {"$set": fields}
        if watermark is not None:
            update["$max"] = {"watermark": watermark}
        self.collection.update_one({"_id": self._id(index)}, update, upsert=True)

    def save_all(self, indices: list[str], position: Position,
                 watermark: Timestamp | None = None, idle: bool = False) -> None:
        for index in indices:
            self.save(index, position, watermark, idle)

    def progress(self, index: str) -> Progress | None:
        document = self.collection.find_one({"_id": self._id(index)}, {"token": 0})
        if document is None:
            return None
        return Progress(document.get("cluster_time"), document.get("watermark"),
                        bool(document.get("idle")), document.get("updated_at"))

    def forget(self, index: str) -> None:
        """Drop an index's position and its backfill state: the index was deleted."""
        self.collection.delete_many({"_id": {"$in": [self._id(index), backfill_state_id(index)]}})

    # -- backfills ---------------------------------------------------------------------

    def start_backfill(self, index: str, operation_time: Timestamp) -> SnapshotPosition:
        """The saved backfill of ``index``, or a new one from ``operation_time`` (T); a
        new one also sets the index's stream position to T, the hand-over point."""
        state = self.collection.find_one({"_id": backfill_state_id(index)})
        if state is None:
            state = {"_id": backfill_state_id(index), "operation_time": operation_time,
                     "last_id": None, "documents": 0, "done": False,
                     "started_at": datetime.now(UTC)}
            self.collection.insert_one(state)
            # the hand-over point, not a save by a running indexer: no updated_at
            self.collection.update_one({"_id": self._id(index)}, {"$setOnInsert": {
                "token": None, "cluster_time": operation_time, "seq": 0,
                "watermark": operation_time, "idle": False}}, upsert=True)
        return SnapshotPosition(state["operation_time"], state["last_id"], state["documents"])

    def save_backfill(self, index: str, position: SnapshotPosition,
                      chunks: int | None = None) -> None:
        """``chunks``: a distributed build's chunks published so far."""
        fields = {"last_id": position.last_id, "documents": position.documents}
        if chunks is not None:
            fields["chunks"] = chunks
        self.collection.update_one({"_id": backfill_state_id(index)}, {"$set": fields})

    def chunk_done(self, index: str, number: int) -> None:
        """A worker wrote chunk ``number`` of ``index``'s distributed build (idempotent)."""
        self.collection.update_one({"_id": backfill_state_id(index)},
                                   {"$addToSet": {"chunks_done": number}})

    def chunks(self, index: str) -> tuple[int, int]:
        """(chunks published, chunks written) of a distributed build."""
        state = self.collection.find_one({"_id": backfill_state_id(index)},
                                         {"chunks": 1, "chunks_done": 1}) or {}
        return int(state.get("chunks", 0)), len(state.get("chunks_done", []))

    def finish_backfill(self, index: str) -> None:
        self.collection.update_one({"_id": backfill_state_id(index)}, {"$set": {
            "done": True, "finished_at": datetime.now(UTC)}})

    def backfill_state(self, index: str) -> tuple[SnapshotPosition, bool] | None:
        """(position, done) of ``index``'s backfill; None if none ever started."""
        state = self.collection.find_one({"_id": backfill_state_id(index)})
        if state is None:
            return None
        return (SnapshotPosition(state["operation_time"], state["last_id"], state["documents"]),
                bool(state.get("done")))

    def backfill_in_progress(self, index: str) -> bool:
        """A started, unfinished backfill (its older writes must still meet tombstones)."""
        state = self.backfill_state(index)
        return state is not None and not state[1]

    def backfill_finished(self, index: str) -> bool:
        state = self.backfill_state(index)
        return state is not None and state[1]


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
