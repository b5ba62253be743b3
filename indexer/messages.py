"""What travels on Kafka between the relay, the build command and the workers (BSON).

    item-changes    key: the item's Elasticsearch id (its changes stay in order in one
                    partition); value: {op, id, v (external version), ct (cluster time),
                    doc + size (its BSON bytes) | fetch, problem, epoch}; timestamp:
                    the change's cluster time
    item-backfill   key: the chunk number; value: {index, ref, t (operation time T),
                    n (chunk number), ids}: the documents a worker reads and writes with
                    version (T, 0) into that one index

BSON keeps every type MongoDB has (ObjectId ids, dates, decimals). The external version
travels in the message, computed by the relay from the cluster time: a Kafka offset is
never a version. A document whose message would be over ``max_bytes`` travels as a
reference (``fetch``): the worker reads it by id, as the change stream's updateLookup
would (the document as it is now, which versions make harmless); the pipeline then
applies ``max_document_bytes`` exactly as in the embedded daemon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import bson
from bson.codec_options import CodecOptions
from bson.timestamp import Timestamp

from indexer.changes import Change, es_id, id_problem

_CODEC: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True)
ENVELOPE_BYTES = 512  # room for the fields around the document


def key(doc_id: Any) -> bytes:
    """The partitioning key: one item's changes always land in one partition."""
    return (es_id(doc_id) if id_problem(doc_id) is None else repr(doc_id)).encode()


@dataclass(frozen=True)
class Published:
    """A change as a worker receives it."""

    change: Change
    epoch: int  # the relay's lease epoch: a worker drops a message from an older one
    fetch: bool  # the document was too big for a message: read it by id


def encode_change(change: Change, epoch: int, max_bytes: int) -> bytes:
    message: dict[str, Any] = {"op": change.op, "id": change.doc_id, "v": change.version,
                               "ct": change.cluster_time, "problem": change.problem,
                               "epoch": epoch}
    if change.document is not None:
        if change.size_bytes + ENVELOPE_BYTES <= max_bytes:
            message["doc"], message["size"] = change.document, change.size_bytes
        else:
            message["fetch"] = True
    return bson.encode(message)


def decode_change(value: bytes) -> Published:
    message = bson.decode(value, codec_options=_CODEC)
    change = Change(message["op"], message["id"], message["v"], message["ct"],
                    message.get("doc"), message.get("problem"),
                    message.get("size", -1))  # not measured again by encoding the document
    return Published(change, int(message["epoch"]), bool(message.get("fetch")))


@dataclass(frozen=True)
class Chunk:
    """A share of a backfill: these ids, into this index, at version (T, 0)."""

    index: str
    ref: str  # the model version whose item tower fills the index
    operation_time: Timestamp
    number: int
    ids: list[Any]


def encode_chunk(chunk: Chunk) -> bytes:
    return bson.encode({"index": chunk.index, "ref": chunk.ref, "t": chunk.operation_time,
                        "n": chunk.number, "ids": chunk.ids})


def decode_chunk(value: bytes) -> Chunk:
    message = bson.decode(value, codec_options=_CODEC)
    return Chunk(message["index"], message["ref"], message["t"], int(message["n"]),
                 list(message["ids"]))
