"""The topic's messages (unit, no server): every BSON type survives, the version travels
in the message, a document too big for Kafka travels as a reference, packs stay under
the message limit with the newest cluster time as their timestamp, one item's changes
keep one partition, a message of a relay before packs still reads; a build's page
travels as chunks of its documents under the limit (a big one as its id)."""

from __future__ import annotations

from datetime import datetime

import bson
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp

from indexer.changes import Change, id_problem
from indexer.messages import (
    Chunk,
    chunks_of,
    decode_chunk,
    decode_pack,
    encode_chunk,
    encode_pack,
    key,
    partition_of,
)
from indexer.versioning import external_version

T = Timestamp(1_795_000_000, 4)


def test_a_change_round_trips_with_its_types_and_version() -> None:
    object_id = bson.ObjectId()
    document = {"_id": object_id, "title": "t", "price": bson.Decimal128("1.5"),
                "created_at": datetime(2026, 1, 1), "tags": ["a"]}  # naive UTC, as decoded
    change = Change("upsert", object_id, external_version(T, 2), T, document)
    deleted = Change("delete", {"odd": 1}, 0, T, problem=id_problem({"odd": 1}))
    [encoded] = encode_pack([change, deleted], epoch=7, max_bytes=1_000_000)
    pack = decode_pack(encoded.value)
    assert pack.changes == [change, deleted] and pack.epoch == 7 and not pack.fetch


def test_a_document_over_the_message_size_travels_as_a_reference() -> None:
    small = Change("upsert", "small", external_version(T, 1), T, {"_id": "small"})
    big = Change("upsert", "big", external_version(T, 2), T, {"_id": "big", "b": "x" * 5000})
    [encoded] = encode_pack([small, big], 1, max_bytes=4096)
    pack = decode_pack(encoded.value)
    assert pack.fetch == {1} and pack.changes[1].document is None
    assert pack.changes[1].version == big.version and pack.changes[0] == small


def test_packs_stay_under_the_limit_and_carry_their_newest_time() -> None:
    changes = [Change("upsert", f"i{n}", external_version(Timestamp(T.time + n, 1), 1),
                      Timestamp(T.time + n, 1), {"_id": f"i{n}", "text": "y" * 900})
               for n in range(40)]
    packs = encode_pack(changes, 3, max_bytes=16 * 1024)
    assert len(packs) > 2 and all(len(p.value) <= 16 * 1024 for p in packs)
    read = [decode_pack(p.value) for p in packs]
    assert [c for pack in read for c in pack.changes] == changes  # in order, none lost
    for encoded, pack in zip(packs, read, strict=True):
        # the first pack at or after a time holds every change at or after it
        assert encoded.timestamp_ms == pack.changes[-1].cluster_time.time * 1000
    assert len(packs[0].value) > 16 * 1024 // 2  # not a message per change


def test_a_message_of_a_relay_before_packs_still_reads() -> None:
    change = Change("upsert", 7, external_version(T, 1), T, {"_id": 7, "a": 1})
    old = bson.encode({"op": "upsert", "id": 7, "v": change.version, "ct": T,
                       "problem": None, "epoch": 2, "doc": change.document,
                       "size": change.size_bytes})
    assert decode_pack(old).changes == [change] and decode_pack(old).epoch == 2
    fetched = bson.encode({"op": "upsert", "id": 7, "v": 1, "ct": T, "problem": None,
                           "epoch": 2, "fetch": True})
    assert decode_pack(fetched).fetch == {0}


def test_partitions_and_chunks() -> None:
    assert key("i1") == key("i1") == b"i1" and key(7) == b"7"
    assert key({"a": 1}) == b"{'a': 1}"
    spread = [partition_of(f"i{n}", 12) for n in range(1200)]
    assert spread == [partition_of(f"i{n}", 12) for n in range(1200)]  # stable
    assert all(60 < spread.count(p) < 140 for p in range(12))  # even


def _raw(document: dict) -> RawBSONDocument:
    return RawBSONDocument(bson.encode(document))


def test_a_page_travels_as_chunks_of_documents_under_the_limit() -> None:
    page = [_raw({"_id": n, "text": "y" * 900}) for n in range(40)]
    page.insert(7, _raw({"_id": "big", "b": "x" * 20_000}))
    chunks = chunks_of(page, "idx-g1", "m@1", T, 3, max_bytes=16 * 1024)
    encoded = [encode_chunk(chunk) for chunk in chunks]
    assert len(chunks) > 2 and all(len(value) <= 16 * 1024 for value in encoded)
    read = [decode_chunk(value) for value in encoded]
    assert read == chunks and [chunk.number for chunk in read] == list(range(3, 3 + len(read)))
    # every document once, in order; the one too big for a message as its id
    assert [d.raw for chunk in read for d in chunk.documents] == \
        [d.raw for d in page if d["_id"] != "big"]
    assert [i for chunk in read for i in chunk.ids] == ["big"]
    assert all(chunk.index == "idx-g1" and chunk.operation_time == T for chunk in read)


def test_a_chunk_of_ids_from_an_earlier_release_still_reads() -> None:
    ids = ["a", 2, bson.ObjectId()]
    old = bson.encode({"index": "idx-g1", "ref": "m@1", "t": T, "n": 3, "ids": ids})
    assert decode_chunk(old) == Chunk("idx-g1", "m@1", T, 3, [], ids)
