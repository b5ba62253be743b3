"""The relay lease against a real MongoDB: one holder, an epoch per take-over, and a
holder that lost it refused its renewals and saves (the fencing a paused relay meets)."""

from __future__ import annotations

import time

import pytest
from bson.timestamp import Timestamp
from pymongo.database import Database

from indexer import lease as lease_module
from indexer.changes import Position
from indexer.lease import Fenced, Lease, marks_of
from indexer.offsets import TopicOffsets


def test_one_holder_an_epoch_per_takeover_and_fencing(mongo_db: Database) -> None:
    collection = mongo_db["checkpoints"]
    first, second = (Lease(collection, "items", name, ttl_s=1.5) for name in ("a", "b"))
    assert first.acquire() and first.epoch == 1
    assert not second.acquire()  # held and not expired
    position = Position({"_data": "t1"}, Timestamp(1_795_000_000, 3), 1)
    first.save(position, watermark=Timestamp(1_795_000_000, 3), idle=False)
    assert second.position() == position
    time.sleep(3.0)  # first stops renewing; the cluster time (1 s steps) passes the expiry
    assert second.acquire() and second.epoch == 2
    with pytest.raises(Fenced, match="held epoch 1"):  # its last write is older than ttl/2
        first.renew()
    with pytest.raises(Fenced):
        first.save(Position({"_data": "stale"}, Timestamp(1_795_000_001, 1), 1), None, False)
    assert second.position() == position  # the stale save did not land
    second.release()  # a clean stop hands over at once
    assert first.acquire() and first.epoch == 3


def test_a_workers_index_holds_what_the_newest_mark_it_reached_says(mongo_db: Database,
                                                                    monkeypatch) -> None:
    collection = mongo_db["checkpoints"]
    monkeypatch.setattr(lease_module, "MARK_EVERY_S", 0.0)
    monkeypatch.setattr(lease_module, "MARKS", 3)
    relay = Lease(collection, "items", "a", ttl_s=30)
    assert relay.acquire()
    offsets = TopicOffsets(collection, "changes")
    assert offsets.progress("idx", relay.id) is None  # no worker writes it: the daemon's
    offsets.set_start("idx", {0: 0, 1: 0})
    for second, produced in ((1, {0: 5, 1: 2}), (2, {0: 9, 1: 2}), (3, {0: 9, 1: 7}),
                             (4, {0: 12, 1: 7})):
        stamp = Timestamp(1_795_000_000 + second, 1)
        relay.save(Position({"_data": f"t{second}"}, stamp, 1), stamp, False, produced)
    assert [m.watermark.time for m in marks_of(relay.state())] == [
        1_795_000_002, 1_795_000_003, 1_795_000_004]  # the newest MARKS
    progress = offsets.progress("idx", relay.id)
    assert progress is not None and progress.watermark is None  # behind every mark kept
    offsets.save(["idx"], {0: 9, 1: 3}, {})
    progress = offsets.progress("idx", relay.id)
    assert progress is not None and progress.watermark == Timestamp(1_795_000_002, 1)
    offsets.save(["idx"], {0: 20, 1: 7}, {})
    progress = offsets.progress("idx", relay.id)
    assert progress is not None and progress.watermark == Timestamp(1_795_000_004, 1)
    assert progress.lag_s(Timestamp(1_795_000_010, 1)) == 6.0


def test_a_renewal_writes_only_once_half_the_ttl_passed_since_the_last_fenced_write(
        mongo_db: Database) -> None:
    """A relay saving its position every batch extends its lease with each save: the
    renewal before a publish writes nothing then, and writes again (fenced) once half
    the TTL passed without one."""
    collection = mongo_db["checkpoints"]
    lease = Lease(collection, "items", "a", ttl_s=2.0)
    assert lease.acquire()
    position = Position({"_data": "t1"}, Timestamp(1_795_000_000, 3), 1)
    lease.save(position, watermark=None, idle=False)
    saved = lease.state()["expires_at"]
    time.sleep(0.1)
    lease.renew()
    assert lease.state()["expires_at"] == saved  # within ttl/2 of the save: no write
    time.sleep(1.0)
    lease.renew()
    assert lease.state()["expires_at"] > saved
