"""What travels on Kafka between the relay, the build command and the workers (BSON).

    item-changes    a pack: one partition's changes from one relay batch, in order;
                    partition: a hash of the item's Elasticsearch id (``partition_of``:
                    one item's changes stay in one partition); value: {epoch, changes:
                    [{op, id, v (external version), ct (cluster time), doc + size (its
                    BSON bytes) | fetch, problem}]}; timestamp: the newest cluster time
                    in the pack, so the first pack at or after a time T holds every
                    change at or after T
    item-backfill   key: the chunk number (partitions take the chunks in turn); value:
                    {index, ref, t (operation time T), n (chunk number), docs, ids}: a
                    page of the build's scan, which a
                    worker writes with version (T, 0) into that one index: the documents
                    themselves, and the ids of any too big for a message (read by id)

Packs, not a message per change: kafka-python spends ~15 us on each message it sends
and ~4 us on each it reads, more than the rest of the relay's work on a change. BSON
keeps every type MongoDB has (ObjectId ids, dates, decimals). The external version
travels in the message, computed by the relay from the cluster time: a Kafka offset is
never a version, so a worker may replay a pack, or read it in two batches, harmlessly. A
document whose entry would not fit a message of ``max_bytes`` travels as a reference
(``fetch``): the worker reads it by id, as the change stream's updateLookup would (the
document as it is now, which versions make harmless); the pipeline then applies
``max_document_bytes`` exactly as in the embedded daemon. A chunk carries its documents
for the same reason packs do: the build reads the collection once, in ``_id`` order, and
no worker queries MongoDB for its share (ids-only chunks of earlier releases still read).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import bson
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp

from indexer.changes import Change, document_codec, es_id, id_problem

_CODEC = document_codec(CodecOptions())
_RAW: CodecOptions[RawBSONDocument] = _CODEC.with_options(document_class=RawBSONDocument)
_LIST_ENTRY_BYTES = 8  # a list entry's type byte and its index as a key
ENVELOPE_BYTES = 512  # room for a change's fields around its document, and a pack's


def key(doc_id: Any) -> bytes:
    """What partitions an item: its Elasticsearch id (the repr of an id it cannot have)."""
    return (es_id(doc_id) if id_problem(doc_id) is None else repr(doc_id)).encode()


def partition_of(doc_id: Any, partitions: int) -> int:
    """The partition of an item's changes: stable for as long as the topic keeps its
    partition count (versions keep an item right across a change of it)."""
    return zlib.crc32(key(doc_id)) % partitions


@dataclass(frozen=True)
class Pack:
    """One partition's changes from one relay batch, as a worker receives them."""

    epoch: int  # the relay's lease epoch: a worker drops a pack from an older one
    changes: list[Change]
    fetch: frozenset[int]  # positions of changes whose document is read by id


@dataclass(frozen=True)
class Encoded:
    value: bytes
    timestamp_ms: int  # the newest cluster time in the pack


def encode_pack(changes: list[Change], epoch: int, max_bytes: int) -> list[Encoded]:
    """``changes`` (one partition's, in order) as packs of at most ``max_bytes``."""
    packs: list[Encoded] = []
    entries: list[dict[str, Any]] = []
    size = newest = 0
    for change in changes:
        entry: dict[str, Any] = {"op": change.op, "id": change.doc_id, "v": change.version,
                                 "ct": change.cluster_time, "problem": change.problem}
        entry_bytes = ENVELOPE_BYTES
        if change.document is not None:
            if change.size_bytes + 2 * ENVELOPE_BYTES <= max_bytes:
                entry["doc"], entry["size"] = change.document, change.size_bytes
                entry_bytes += change.size_bytes
            else:
                entry["fetch"] = True
        if entries and size + entry_bytes > max_bytes - ENVELOPE_BYTES:
            packs.append(_encoded(entries, epoch, newest))
            entries, size, newest = [], 0, 0
        entries.append(entry)
        size += entry_bytes
        newest = max(newest, change.cluster_time.time)
    if entries:
        packs.append(_encoded(entries, epoch, newest))
    return packs


def _encoded(entries: list[dict[str, Any]], epoch: int, newest_s: int) -> Encoded:
    return Encoded(bson.encode({"epoch": epoch, "changes": entries}), newest_s * 1000)


def decode_pack(value: bytes) -> Pack:
    """A pack, or the one change of a message a relay before packs sent (keyed by item,
    with the same fields at the top level): still on the topic after an upgrade."""
    message = bson.decode(value, codec_options=_CODEC)
    entries = message.get("changes", [message])
    changes = [Change(e["op"], e["id"], e["v"], e["ct"], e.get("doc"), e.get("problem"),
                      e.get("size", -1))  # not measured again by encoding the document
               for e in entries]
    return Pack(int(message["epoch"]), changes,
                frozenset(n for n, e in enumerate(entries) if e.get("fetch")))


@dataclass(frozen=True)
class Chunk:
    """A share of a backfill: these documents (and those of ``ids``, read by id), into
    this index, at version (T, 0)."""

    index: str
    ref: str  # the model version whose item tower fills the index
    operation_time: Timestamp
    number: int
    documents: list[RawBSONDocument]
    ids: list[Any] = field(default_factory=list)


def chunks_of(page: list[RawBSONDocument], index: str, ref: str, operation_time: Timestamp,
              number: int, max_bytes: int) -> list[Chunk]:
    """A page of the scan as chunks numbered from ``number``, each encoding to at most
    ``max_bytes``; a document too big for any travels as its id."""
    chunks: list[Chunk] = []
    documents: list[RawBSONDocument] = []
    ids: list[Any] = []
    size = ENVELOPE_BYTES
    for document in page:
        fits = len(document.raw) + 2 * ENVELOPE_BYTES <= max_bytes
        entry = len(document.raw) + _LIST_ENTRY_BYTES if fits else \
            len(bson.encode({"_id": document["_id"]}))
        if (documents or ids) and size + entry > max_bytes - ENVELOPE_BYTES:
            chunks.append(Chunk(index, ref, operation_time, number + len(chunks), documents,
                                ids))
            documents, ids, size = [], [], ENVELOPE_BYTES
        if fits:
            documents.append(document)
        else:
            ids.append(document["_id"])
        size += entry
    if documents or ids:
        chunks.append(Chunk(index, ref, operation_time, number + len(chunks), documents, ids))
    return chunks


def encode_chunk(chunk: Chunk) -> bytes:
    return bson.encode({"index": chunk.index, "ref": chunk.ref, "t": chunk.operation_time,
                        "n": chunk.number, "docs": chunk.documents, "ids": chunk.ids})


def decode_chunk(value: bytes) -> Chunk:
    """A chunk, its documents left as raw BSON (a worker measures and decodes each); a
    chunk of ids alone from a build of an earlier release reads as such."""
    message = bson.decode(value, codec_options=_RAW)
    return Chunk(message["index"], message["ref"], message["t"], int(message["n"]),
                 list(message.get("docs", [])), list(message["ids"]))
