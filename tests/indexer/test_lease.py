"""The relay lease against a real MongoDB: one holder, an epoch per take-over, and a
holder that lost it refused its renewals and saves (the fencing a paused relay meets)."""

from __future__ import annotations

import time

import pytest
from bson.timestamp import Timestamp
from pymongo.database import Database

from indexer.changes import Position
from indexer.lease import Fenced, Lease


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
    with pytest.raises(Fenced, match="held epoch 1"):
        first.save(Position({"_data": "stale"}, Timestamp(1_795_000_001, 1), 1), None, False)
    with pytest.raises(Fenced):
        first.renew()
    assert second.position() == position  # the stale save did not land
    second.release()  # a clean stop hands over at once
    assert first.acquire() and first.epoch == 3
