"""External versions for Elasticsearch from MongoDB cluster times.

Elasticsearch keeps a write only if its version is higher than the stored one, which
makes replays and backfill/live races settle to the newest state. A version packs

    seconds since 2020 (31 bits) | oplog increment (20 bits) | sequence (12 bits)

into a positive signed 64-bit long. Events of one transaction share a cluster time; the
sequence (1-based position within the cluster time) lets the later one win. Backfill
writes use sequence 0, so any live change at the same cluster time beats them.
"""

from __future__ import annotations

from collections.abc import Callable

from bson.timestamp import Timestamp

from runtime.errors import Refused

EPOCH = 1_577_836_800  # 2020-01-01T00:00:00Z; 31 bits of seconds last until 2088
INC_BITS = 20  # a primary would need > 1M oplog entries in one second to overflow
SEQ_BITS = 12
MAX_SEQ = (1 << SEQ_BITS) - 1


class VersionOverflow(Refused):
    """A cluster time that does not fit the version layout."""


def external_version(cluster_time: Timestamp, seq: int) -> int:
    return _packed(cluster_time.time, cluster_time.inc, seq)


def _packed(time: int, inc: int, seq: int) -> int:
    """The version of (seconds, increment) of a cluster time and a sequence."""
    seconds = time - EPOCH
    if not 0 <= seconds < 1 << 31:
        raise VersionOverflow(f"cluster time {Timestamp(time, inc)} is outside 2020..2088")
    if inc >= 1 << INC_BITS:
        raise VersionOverflow(f"oplog increment {inc} exceeds {1 << INC_BITS}")
    return (seconds << (INC_BITS + SEQ_BITS)) | (inc << SEQ_BITS) | min(seq, MAX_SEQ)


def cluster_time_of(version: int) -> Timestamp:
    """The cluster time a version was made from (for status and lag)."""
    return Timestamp(EPOCH + (version >> (INC_BITS + SEQ_BITS)),
                     (version >> SEQ_BITS) & ((1 << INC_BITS) - 1))


class Sequencer:
    """Numbers events within one cluster time, continuing from a saved position."""

    def __init__(self, cluster_time: Timestamp | None = None, seq: int = 0,
                 on_overflow: Callable[[], None] = lambda: None) -> None:
        self.cluster_time = cluster_time
        self.seq = seq
        self.on_overflow = on_overflow
        # the cluster time's parts, read once (Timestamp's fields and == are Python calls)
        self._last = (cluster_time.time, cluster_time.inc) if cluster_time else None

    def next(self, cluster_time: Timestamp) -> int:
        """The version of the next event, at ``cluster_time`` (once per event)."""
        time, inc = cluster_time.time, cluster_time.inc
        if (time, inc) == self._last:
            self.seq += 1
        else:
            self.cluster_time, self._last, self.seq = cluster_time, (time, inc), 1
        if self.seq > MAX_SEQ:
            self.on_overflow()  # a > 4095-event transaction: later ops share the last seq
        return _packed(time, inc, self.seq)
