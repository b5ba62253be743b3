"""The packs a worker read from item-changes, handed out as batches of bounded size.

A pack holds one partition's changes from one relay batch (indexer/messages.py): up to
the relay's batch size, so one pack may be split over two of the worker's batches. Such
a batch saves the pack's own offset, not the next one, until the pack's last change is
in a batch: after a restart the pack is read again whole, and versions make that replay
harmless. A pack from a relay whose lease was taken over (an older epoch than one seen
on its partition) is dropped and counted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from kafka import TopicPartition

from indexer.changes import Batch, TopicPosition
from indexer.messages import Pack, decode_pack


@dataclass
class Fetched:
    """A pack read from Kafka and not yet wholly handed out."""

    tp: TopicPartition
    offset: int
    pack: Pack
    taken: int = 0  # its changes already in a batch


class FetchedPacks:
    def __init__(self, on_fenced: Callable[[int], None]) -> None:
        self.on_fenced = on_fenced  # changes dropped: their relay was fenced
        self.pending: deque[Fetched] = deque()
        self.epochs: dict[int, int] = {}  # partition -> highest relay epoch seen

    def __bool__(self) -> bool:
        return bool(self.pending)

    @property
    def waiting(self) -> int:
        """Changes read and not yet in a batch."""
        return sum(len(f.pack.changes) - f.taken for f in self.pending)

    def add(self, tp: TopicPartition, offset: int, value: bytes) -> None:
        self.pending.append(Fetched(tp, offset, decode_pack(value)))

    def forget(self, partitions: set[TopicPartition] | None = None) -> None:
        """Drop what was read of ``partitions`` (all: None): they are read again."""
        self.pending = deque(f for f in self.pending
                             if partitions is not None and f.tp not in partitions)

    def batch(self, owned: set[TopicPartition], max_docs: int,
              max_bytes: int) -> tuple[Batch, list[int]]:
        """The next changes (``max_docs``, ``max_bytes`` of documents at most) with their
        positions; and where in the batch the changes are whose document is read by id.
        Packs of partitions no longer ``owned`` are left to their new owner."""
        batch = Batch(position=TopicPosition())
        position = batch.position
        assert isinstance(position, TopicPosition)
        fetch: list[int] = []
        while self.pending and len(batch.changes) < max_docs and batch.size_bytes < max_bytes:
            head = self.pending[0]
            where, partition = (head.tp.topic, head.tp.partition), head.tp.partition
            pack = head.pack
            if head.tp not in owned:
                self.pending.popleft()
                continue
            if pack.epoch < self.epochs.get(partition, 0):
                self.on_fenced(len(pack.changes))
                self.pending.popleft()
                position.offsets[where] = head.offset + 1
                continue
            self.epochs[partition] = position.epochs[partition] = pack.epoch
            while head.taken < len(pack.changes) and len(batch.changes) < max_docs and \
                    batch.size_bytes < max_bytes:
                if head.taken in pack.fetch:
                    fetch.append(len(batch.changes))
                change = pack.changes[head.taken]
                batch.changes.append(change)
                batch.size_bytes += change.size_bytes
                head.taken += 1
            if head.taken == len(pack.changes):
                self.pending.popleft()
                position.offsets[where] = head.offset + 1
            else:
                position.offsets[where] = head.offset
        return (batch, fetch) if position.offsets else (Batch(), [])
