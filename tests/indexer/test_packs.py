"""A worker's packs as batches (unit, no server): a pack split over two batches keeps
its own offset until its last change is handed out, a fenced relay's pack is dropped
past, a revoked partition's packs are left to the new owner, bytes bound a batch."""

from __future__ import annotations

from bson.timestamp import Timestamp
from kafka import TopicPartition

from indexer.changes import Change, TopicPosition
from indexer.messages import encode_pack
from indexer.packs import FetchedPacks
from indexer.versioning import external_version

T = Timestamp(1_795_000_000, 1)
P0, P1 = TopicPartition("changes", 0), TopicPartition("changes", 1)


def _changes(first: int, count: int, size: int = 10) -> list[Change]:
    return [Change("upsert", f"i{n}", external_version(T, n + 1), T,
                   {"_id": f"i{n}", "t": "x" * size}) for n in range(first, first + count)]


def _pack(changes: list[Change], epoch: int = 1) -> bytes:
    [encoded] = encode_pack(changes, epoch, 1_000_000)
    return encoded.value


def _offsets(batch_position: object) -> dict[tuple[str, int], int]:
    assert isinstance(batch_position, TopicPosition)
    return batch_position.offsets


def test_a_pack_split_over_batches_saves_its_own_offset_until_it_is_done() -> None:
    fenced: list[int] = []
    packs = FetchedPacks(fenced.append)
    packs.add(P0, 40, _pack(_changes(0, 3)))
    packs.add(P0, 41, _pack(_changes(3, 4)))
    assert packs.waiting == 7  # what a worker weighs against batch_max_docs
    first, _ = packs.batch({P0}, 5, 10**9)
    assert packs.waiting == 2
    assert [c.doc_id for c in first.changes] == ["i0", "i1", "i2", "i3", "i4"]
    assert _offsets(first.position) == {("changes", 0): 41}  # pack 41 is half done
    second, _ = packs.batch({P0}, 5, 10**9)
    assert [c.doc_id for c in second.changes] == ["i5", "i6"]
    assert _offsets(second.position) == {("changes", 0): 42} and not packs and not fenced
    assert packs.waiting == 0


def test_a_fenced_relays_pack_is_dropped_and_counted() -> None:
    fenced: list[int] = []
    packs = FetchedPacks(fenced.append)
    packs.add(P0, 7, _pack(_changes(0, 2), epoch=3))
    packs.add(P0, 8, _pack(_changes(2, 3), epoch=2))  # the old leader, still sending
    batch, _ = packs.batch({P0}, 100, 10**9)
    assert [c.doc_id for c in batch.changes] == ["i0", "i1"] and fenced == [3]
    assert _offsets(batch.position) == {("changes", 0): 9}
    assert isinstance(batch.position, TopicPosition) and batch.position.epochs == {0: 3}


def test_revoked_partitions_are_left_and_bytes_bound_a_batch() -> None:
    packs = FetchedPacks(lambda n: None)
    packs.add(P1, 3, _pack(_changes(0, 2)))
    packs.add(P0, 5, _pack(_changes(2, 4, size=1000)))
    batch, _ = packs.batch({P0}, 100, 2000)  # P1 was revoked after it was read
    assert [c.doc_id for c in batch.changes] == ["i2", "i3"]  # 2 KB of documents
    assert _offsets(batch.position) == {("changes", 0): 5} and packs.waiting == 2
    packs.forget({P0})  # sought again: read anew
    assert not packs and packs.waiting == 0 and packs.batch({P0}, 100, 2000)[0].position is None


def test_documents_too_big_for_a_message_are_named_for_reading() -> None:
    packs = FetchedPacks(lambda n: None)
    changes = _changes(0, 3)
    big = Change("upsert", "big", external_version(T, 9), T, {"_id": "big", "b": "x" * 9000})
    [encoded] = encode_pack([changes[0], big, changes[1]], 1, max_bytes=8192)
    packs.add(P0, 0, encoded.value)
    batch, fetch = packs.batch({P0}, 100, 10**9)
    assert fetch == [1] and batch.changes[1].document is None
