from __future__ import annotations

import pytest
from bson.timestamp import Timestamp

from indexer.changes import Position
from indexer.checkpoint import earliest
from indexer.versioning import (
    MAX_SEQ,
    Sequencer,
    VersionOverflow,
    cluster_time_of,
    external_version,
)

T = Timestamp(1_795_000_000, 7)


def test_versions_order_like_cluster_times_then_sequence() -> None:
    ordered = [external_version(Timestamp(T.time, 6), 3), external_version(T, 0),
               external_version(T, 1), external_version(T, 2), external_version(
                   Timestamp(T.time + 1, 0), 1)]
    assert ordered == sorted(ordered) and len(set(ordered)) == len(ordered)
    assert max(ordered) < 2**63
    assert cluster_time_of(external_version(T, 5)) == T


def test_sequencer_numbers_events_within_one_cluster_time() -> None:
    sequencer = Sequencer()
    first, second = sequencer.next(T), sequencer.next(T)
    assert (first, second) == (external_version(T, 1), external_version(T, 2))
    assert sequencer.next(Timestamp(T.time, 8)) == external_version(Timestamp(T.time, 8), 1)


def test_resumed_sequencer_continues_a_transaction() -> None:
    """A crash after the first event of a transaction: the replayed second one must still win."""
    resumed = Sequencer(T, 1)
    assert resumed.next(T) == external_version(T, 2)


def test_overflows_are_loud_or_counted() -> None:
    with pytest.raises(VersionOverflow, match=r"cluster time Timestamp\(1000, 1\) is outside"):
        external_version(Timestamp(1_000, 1), 0)
    with pytest.raises(VersionOverflow, match="oplog increment 1048576 exceeds"):
        external_version(Timestamp(T.time, 1 << 20), 0)
    with pytest.raises(VersionOverflow):  # the sequencer's path too
        Sequencer().next(Timestamp(1_000, 1))
    overflows: list[int] = []
    sequencer = Sequencer(T, MAX_SEQ, on_overflow=lambda: overflows.append(1))
    assert sequencer.next(T) == external_version(T, MAX_SEQ)  # shares the last sequence
    assert overflows == [1]


def test_earliest_position_serves_every_target() -> None:
    a = Position({"_data": "a"}, Timestamp(T.time, 1), 2)
    b = Position({"_data": "b"}, Timestamp(T.time, 5), 1)
    assert earliest([b, a]) == a
    fresh = Position(None, Timestamp(T.time, 3), 0)  # a backfill's hand-over point
    assert earliest([b, fresh, a]) == Position(None, Timestamp(T.time, 1), 0)
