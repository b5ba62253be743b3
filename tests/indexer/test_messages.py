"""The topic's messages (unit, no server): every BSON type survives, the version travels
in the message, a document too big for Kafka travels as a reference, keys keep one
item's changes in one partition."""

from __future__ import annotations

from datetime import UTC, datetime

import bson
from bson.timestamp import Timestamp

from indexer.changes import Change, id_problem
from indexer.messages import (
    Chunk,
    decode_change,
    decode_chunk,
    encode_change,
    encode_chunk,
    key,
)
from indexer.versioning import external_version

T = Timestamp(1_795_000_000, 4)


def test_a_change_round_trips_with_its_types_and_version() -> None:
    object_id = bson.ObjectId()
    document = {"_id": object_id, "title": "t", "price": bson.Decimal128("1.5"),
                "created_at": datetime(2026, 1, 1, tzinfo=UTC), "tags": ["a"]}
    change = Change("upsert", object_id, external_version(T, 2), T, document)
    published = decode_change(encode_change(change, epoch=7, max_bytes=1_000_000))
    assert published.change == change and published.epoch == 7 and not published.fetch
    assert published.change.document is not None
    assert published.change.document["created_at"].tzinfo is not None
    deleted = Change("delete", {"odd": 1}, 0, T, problem=id_problem({"odd": 1}))
    assert decode_change(encode_change(deleted, 1, 1_000_000)).change == deleted


def test_a_document_over_the_message_size_travels_as_a_reference() -> None:
    big = Change("upsert", "big", external_version(T, 1), T, {"_id": "big", "b": "x" * 5000})
    published = decode_change(encode_change(big, 1, max_bytes=4096))
    assert published.fetch and published.change.document is None
    assert published.change.version == big.version


def test_keys_and_chunks() -> None:
    assert key("i1") == key("i1") == b"i1" and key(7) == b"7"
    assert key({"a": 1}) == b"{'a': 1}"
    chunk = Chunk("idx-g1", "m@1", T, 3, ["a", 2, bson.ObjectId()])
    assert decode_chunk(encode_chunk(chunk)) == chunk
