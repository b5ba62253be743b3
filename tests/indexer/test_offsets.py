"""The worker's checkpoint (indexer/offsets.py): offsets never go backwards, a batch's
offsets reach Kafka only once saved, chunks are marked written. No server: the MongoDB
side is a recording stand-in for ``TopicOffsets`` and ``Checkpoints``."""

from __future__ import annotations

from typing import Any, cast

import pytest

from indexer.changes import Batch, TopicPosition
from indexer.checkpoint import Checkpoints
from indexer.offsets import TopicCheckpoint, TopicOffsets


class Saved:
    topic = "changes"

    def __init__(self) -> None:
        self.offsets: list[tuple[list[str], dict[int, int]]] = []
        self.epochs: list[dict[int, int]] = []
        self.chunks: list[tuple[str, int]] = []

    def save(self, indices: list[str], offsets: dict[int, int], epochs: dict[int, int]) -> None:
        if indices:
            self.offsets.append((indices, offsets))
        if epochs:
            self.epochs.append(epochs)

    def chunk_done(self, index: str, number: int) -> None:
        self.chunks.append((index, number))


def _checkpoint(saved: Saved, indices: list[str]) -> TopicCheckpoint:
    return TopicCheckpoint(cast(TopicOffsets, saved), cast(Checkpoints, saved),
                           lambda: indices)


def _batch(offsets: dict[tuple[str, int], int], **position: Any) -> Batch:
    return Batch(position=TopicPosition(offsets, **position))


def test_an_index_offset_never_goes_backwards() -> None:
    saved, indices = Saved(), ["old"]
    checkpoint = _checkpoint(saved, indices)
    checkpoint.save(_batch({("changes", 0): 100, ("changes", 1): 7}))
    indices.append("new")  # a new version: partition 0 sought back to its start, 40
    checkpoint.save(_batch({("changes", 0): 60}))
    assert saved.offsets == [(["old"], {0: 100, 1: 7}), (["new"], {0: 60})]
    checkpoint.save(_batch({("changes", 0): 101}))
    assert saved.offsets[-2:] == [(["old"], {0: 101}), (["new"], {0: 101})]


def test_kafka_gets_only_what_was_saved_once() -> None:
    saved = Saved()
    checkpoint = _checkpoint(saved, ["i"])
    assert checkpoint.committable() == {}
    checkpoint.save(_batch({("changes", 0): 5}, epochs={0: 3}))
    checkpoint.save(_batch({("changes", 0): 9, ("backfill", 2): 4}, chunk=("i", 8)))
    assert checkpoint.committable() == {("changes", 0): 9, ("backfill", 2): 4}
    assert checkpoint.committable() == {}
    assert saved.epochs == [{0: 3}] and saved.chunks == [("i", 8)]
    assert saved.offsets == [(["i"], {0: 5}), (["i"], {0: 9})]  # backfill offsets: Kafka's


def test_a_failed_save_is_not_committed_and_is_retried_whole() -> None:
    class Down(Saved):
        def save(self, indices: list[str], offsets: dict[int, int],
                 epochs: dict[int, int]) -> None:
            raise ConnectionError("mongodb down")

    checkpoint = _checkpoint(Down(), ["i"])
    batch = _batch({("changes", 0): 5})
    with pytest.raises(ConnectionError):
        checkpoint.save(batch)
    assert checkpoint.committable() == {}
    saved = Saved()
    checkpoint.offsets = cast(TopicOffsets, saved)
    checkpoint.save(batch)  # the retry: nothing was recorded as saved by the failure
    assert saved.offsets == [(["i"], {0: 5})]
    assert checkpoint.committable() == {("changes", 0): 5}
