"""Where each index stands in the item-changes topic: one offset per (index, partition)
in MongoDB, the workers' counterpart of the daemon's per-index stream positions.

    {_id: "offsets|<topic>|<index>", offsets: {"<partition>": next offset}}
    {_id: "epochs|<topic>", epochs: {"<partition>": highest relay epoch seen}}

Saves use ``$max``: a worker that lost a partition and still finishes a batch can never
move an index backwards past what the partition's new owner saved. An index no worker
wrote yet gets its start offsets once (the first worker to look decides, ``$setOnInsert``),
so every worker that gains one of its partitions starts it at the same place.

``TopicCheckpoint`` is a worker's one owner of its offsets, in a fixed order: the driver
saves a batch only once its writes are acknowledged -> the offsets go to MongoDB (never
backwards) -> the reader commits them to Kafka at its next poll (Kafka's offsets are for
lag and tooling; MongoDB's are where each index resumes).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from indexer.changes import Batch, TopicPosition
from indexer.checkpoint import Checkpoints, Progress
from indexer.lease import marks_of
from runtime.clients import MongoCollection


class TopicOffsets:
    def __init__(self, collection: MongoCollection, topic: str) -> None:
        self.collection = collection
        self.topic = topic

    def _id(self, index: str) -> str:
        return f"offsets|{self.topic}|{index}"

    def start(self, index: str, partition: int,
              initial: Callable[[str], dict[int, int]]) -> int:
        """The next offset of ``partition`` for ``index``; a new index gets ``initial``."""
        document = self.collection.find_one({"_id": self._id(index)})
        if document is None:
            self.set_start(index, initial(index))
            document = self.collection.find_one({"_id": self._id(index)}) or {}
        offsets = document.get("offsets", {})
        return int(offsets.get(str(partition), 0))

    def offsets(self, index: str) -> dict[int, int] | None:
        """Every partition's next offset for ``index``; None: no worker writes it."""
        document = self.collection.find_one({"_id": self._id(index)})
        if document is None:
            return None
        return {int(p): int(o) for p, o in (document.get("offsets") or {}).items()}

    def progress(self, index: str, lease_id: str) -> Progress | None:
        """Where a workers' index stands: the newest relay mark whose offsets it reached
        holds every change up to that mark's watermark (lease.py); None when no worker
        writes it. A watermark of None: behind every mark kept (lag past the horizon)."""
        offsets = self.offsets(index)
        if offsets is None:
            return None
        lease = self.collection.find_one({"_id": lease_id}, {"token": 0}) or {}
        marks = marks_of(lease)
        reached = [mark for mark in marks if all(
            offsets.get(partition, 0) >= offset for partition, offset in mark.produced.items())]
        newest = reached[-1] if reached else None
        return Progress(lease.get("cluster_time"), newest.watermark if newest else None,
                        bool(lease.get("idle")) and newest is not None and newest is marks[-1],
                        lease.get("updated_at"))

    def set_start(self, index: str, offsets: dict[int, int]) -> None:
        """Where ``index`` starts (only if nothing decided it before)."""
        self.collection.update_one({"_id": self._id(index)}, {"$setOnInsert": {
            "offsets": {str(p): offset for p, offset in offsets.items()}}}, upsert=True)

    def save(self, indices: list[str], offsets: dict[int, int], epochs: dict[int, int]) -> None:
        """Every index in ``indices`` holds everything before these offsets."""
        moved = {f"offsets.{p}": offset for p, offset in offsets.items()}
        for index in indices:
            self.collection.update_one({"_id": self._id(index)}, {"$max": moved}, upsert=True)
        if epochs:
            self.collection.update_one({"_id": f"epochs|{self.topic}"}, {"$max": {
                f"epochs.{p}": epoch for p, epoch in epochs.items()}}, upsert=True)

    def epoch(self, partition: int) -> int:
        document = self.collection.find_one({"_id": f"epochs|{self.topic}"}) or {}
        return int(document.get("epochs", {}).get(str(partition), 0))

    def forget(self, index: str) -> None:
        self.collection.delete_one({"_id": self._id(index)})


class TopicCheckpoint:
    def __init__(self, offsets: TopicOffsets, checkpoints: Checkpoints,
                 indices: Callable[[], list[str]]) -> None:
        self.offsets = offsets
        self.checkpoints = checkpoints  # where backfill chunks are marked written
        self.indices = indices  # the live indices a batch of changes was written to
        self.lock = threading.Lock()  # saves run on writer threads, commits on the reader's
        self.high: dict[tuple[str, int], int] = {}  # (index, partition) -> saved offset
        self.uncommitted: dict[tuple[str, int], int] = {}  # (topic, partition) -> offset

    def save(self, batch: Batch) -> None:
        """A written batch's offsets (writer thread): each index's offsets only move
        forward, whatever order partitions were sought in; a chunk is marked written."""
        position = batch.position
        assert isinstance(position, TopicPosition)
        moved = {partition: offset for (topic, partition), offset in position.offsets.items()
                 if topic == self.offsets.topic}
        if moved:
            for index in self.indices():
                ahead = {p: o for p, o in moved.items() if o > self.high.get((index, p), -1)}
                if ahead:
                    self.offsets.save([index], ahead, {})
                    self.high.update({(index, p): o for p, o in ahead.items()})
        if position.epochs:
            self.offsets.save([], {}, position.epochs)
        if position.chunk is not None:
            self.checkpoints.chunk_done(*position.chunk)
        with self.lock:
            for tp, offset in position.offsets.items():
                self.uncommitted[tp] = max(offset, self.uncommitted.get(tp, 0))

    def committable(self) -> dict[tuple[str, int], int]:
        """What is written and saved since the last call: for the Kafka commit."""
        with self.lock:
            taken, self.uncommitted = self.uncommitted, {}
        return taken
