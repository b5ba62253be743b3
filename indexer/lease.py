"""The relay's lease: one active relay at a time, fenced by an epoch.

    {_id: "relay|<source>", holder, epoch, expires_at, token, cluster_time, seq,
     watermark, idle, updated_at, marks: [{watermark, produced: {"<partition>": offset}}]}

A relay that finds the lease expired (by the server's clock: expiries are set with
``$$NOW`` and compared with the cluster time ``hello`` reports) takes it and
raises the epoch by one: that epoch is its fencing token. Renewing and saving the stream
position are conditional updates on (holder, epoch), in the same document, so a relay
that was paused past its lease (GC, SIGSTOP) and wakes up can neither extend it nor move
the position: its update matches nothing and it is told ``Fenced``. The position lives
in the lease document so that "is this still my lease" and "save" are one atomic write.

A mark, at most one every MARK_EVERY_S, pairs a watermark with the topic offsets the
relay had produced up to when every change to that watermark was acknowledged: an index
whose workers saved offsets at or past a mark's holds every change up to its watermark
(``TopicOffsets.progress``). The last MARKS are kept (a horizon of about MARKS seconds).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bson.timestamp import Timestamp
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from indexer.changes import Position
from indexer.source import server_time
from runtime.clients import MongoCollection
from runtime.errors import Refused

EPOCH_ZERO = datetime(1970, 1, 1, tzinfo=UTC)
MARK_EVERY_S = 1.0
MARKS = 64
# how much of the TTL a successful fenced write keeps the lease certainly this relay's,
# by its own clock: the server's expiry is a TTL after the write reached it, so only a
# clock running twice as fast as the server's could see it expire sooner
HELD_SHARE = 0.5


def lease_id(source: str) -> str:
    return f"relay|{source}"


class Fenced(Refused):
    """This relay's lease was taken over: it may neither publish nor save a position."""


class Lease:
    def __init__(self, collection: MongoCollection, source: str, holder: str,
                 ttl_s: float) -> None:
        self.collection = collection
        self.id = lease_id(source)
        self.holder = holder
        self.ttl_ms = int(ttl_s * 1000)
        self.held_s = HELD_SHARE * ttl_s  # after a successful fenced write
        self.epoch: int | None = None  # set while this relay holds the lease
        self.held_until = 0.0  # monotonic: until when no renewal is needed
        self.next_mark = 0.0  # monotonic: when the next save adds a mark

    def acquire(self) -> bool:
        """Take the lease if it is free or expired (server clock); True when held."""
        with contextlib.suppress(DuplicateKeyError):  # two relays creating it at once
            self.collection.update_one({"_id": self.id}, {"$setOnInsert": {
                "epoch": 0, "expires_at": EPOCH_ZERO}}, upsert=True)
        now = datetime.fromtimestamp(server_time(self.collection).time, UTC)
        sent = time.monotonic()
        document = self.collection.find_one_and_update(
            {"_id": self.id, "expires_at": {"$lt": now}},
            [{"$set": {"holder": self.holder, "epoch": {"$add": ["$epoch", 1]},
                       "expires_at": {"$add": ["$$NOW", self.ttl_ms]}}}],
            return_document=ReturnDocument.AFTER)
        self.epoch = None if document is None else int(document["epoch"])
        self.held_until = 0.0 if document is None else sent + self.held_s
        return self.epoch is not None

    def renew(self) -> None:
        """Make sure the lease is this relay's before it publishes: a fenced write that
        extends it (Fenced if another relay took it meanwhile), unless the last one
        succeeded within HELD_SHARE of the TTL. A relay saves its position after every
        batch, which extends the lease too, so a busy relay renews without a round trip
        of its own (one a batch was a tenth of its CPU). One paused past the lease has
        its own clock past ``held_until`` when it wakes, so it writes and is refused."""
        if self.epoch is not None and time.monotonic() < self.held_until:
            return
        self._fenced_update([{"$set": {"expires_at": {"$add": ["$$NOW", self.ttl_ms]}}}])

    def save(self, position: Position, watermark: Timestamp | None, idle: bool,
             produced: Mapping[int, int] | None = None) -> None:
        """Save the stream position (and extend the lease), only under this epoch;
        ``produced``: the topic's offsets after every change to ``watermark``."""
        fields: dict[str, Any] = {"token": position.token, "cluster_time": position.cluster_time,
                                  "stream": position.stream,
                                  "seq": position.seq, "idle": idle,
                                  "updated_at": datetime.now(UTC)}
        update: dict[str, Any] = {}
        if watermark is not None:
            fields["watermark"] = watermark
            if produced is not None and time.monotonic() >= self.next_mark:
                self.next_mark = time.monotonic() + MARK_EVERY_S
                mark = {"watermark": watermark,
                        "produced": {str(p): offset for p, offset in produced.items()}}
                update["marks"] = {"$slice": [{"$concatArrays": [
                    {"$ifNull": ["$marks", []]}, [{"$literal": mark}]]}, -MARKS]}
        self._fenced_update([{"$set": {**{k: {"$literal": v} for k, v in fields.items()},
                                       **update,
                                       "expires_at": {"$add": ["$$NOW", self.ttl_ms]}}}])

    def _fenced_update(self, update: list[dict[str, Any]]) -> None:
        if self.epoch is None:
            raise Fenced("this relay does not hold the lease")
        sent = time.monotonic()
        result = self.collection.update_one(
            {"_id": self.id, "holder": self.holder, "epoch": self.epoch}, update)
        if result.matched_count == 0:
            lost, self.epoch, self.held_until = self.epoch, None, 0.0
            raise Fenced(f"the relay lease was taken over (this relay held epoch {lost}); "
                         "its publishing and saving are refused")
        self.held_until = sent + self.held_s

    def release(self) -> None:
        """Give the lease up at once (a clean stop), so a standby need not wait it out."""
        if self.epoch is not None:
            self.collection.update_one({"_id": self.id, "holder": self.holder,
                                        "epoch": self.epoch},
                                       {"$set": {"expires_at": EPOCH_ZERO}})
            self.epoch = None
            self.held_until = 0.0

    def position(self) -> Position | None:
        document = self.collection.find_one({"_id": self.id})
        if document is None or document.get("cluster_time") is None:
            return None
        return Position(document.get("token"), document.get("cluster_time"),
                        document.get("seq", 0), document.get("stream"))

    def state(self) -> dict[str, Any]:
        """The lease as it is (holder, epoch, expiry, position) for status and health."""
        return self.collection.find_one({"_id": self.id}, {"token": 0}) or {}


@dataclass(frozen=True)
class Mark:
    watermark: Timestamp
    produced: dict[int, int]  # partition -> next offset


def marks_of(lease: Mapping[str, Any]) -> list[Mark]:
    """A lease document's marks, oldest first."""
    return [Mark(mark["watermark"], {int(p): int(o) for p, o in mark["produced"].items()})
            for mark in lease.get("marks") or ()]
