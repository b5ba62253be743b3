"""What flows between the indexer's stages: changes, batches, and where a source resumes.

    Source.poll() -> Batch(changes, position, watermark) -> Pipeline -> Writers -> save

A source's state is only its position: a stream resumes after a token (or at an
operation time), a snapshot after the last ``_id`` it handed out. A batch's position is
saved only when every write of the batch (and of every batch before it) is acknowledged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

import bson
from bson.codec_options import CodecOptions
from bson.int64 import Int64
from bson.timestamp import Timestamp

from runtime.ids import id_text_problem

if TYPE_CHECKING:  # a batch may name its own targets: only the type is needed here
    from indexer.pipeline import Target

# _id types whose text is an Elasticsearch id (one catalog holds ids of one kind, so the
# text maps back to one document: indexer.id_kinds); other BSON types (sub-documents,
# floats, binary, dates...) go to dead letters with the reason
ID_TYPES = (str, int, Int64, bson.ObjectId)


def document_codec(options: CodecOptions[Any]) -> CodecOptions[dict[str, Any]]:
    """How every source decodes catalog documents (``options``: the collection's): dicts
    with naive datetimes. BSON dates are UTC, and a timezone-aware one costs the decoder a
    Python call (a change event with two dates: ~11 -> ~5 us to decode); every reader
    of a document takes a naive datetime as UTC (towers.featurizer, the Elasticsearch
    serializers in runtime.clients)."""
    return options.with_options(document_class=dict, tz_aware=False, tzinfo=None)


@dataclass(frozen=True)
class Position:
    """Where a stream (re)starts: after a token, or at an operation time (backfill's T)."""

    token: dict[str, Any] | None = None
    cluster_time: Timestamp | None = None
    seq: int = 0  # sequence of the token's event within its cluster time
    # which stream made the token: the collections it watched ("items", or
    # "categories+items" with relations); a stream of another kind starts at the time
    stream: str | None = None


@dataclass(frozen=True)
class SnapshotPosition:
    """Where a snapshot scan resumes: after ``last_id`` (None: from the start)."""

    operation_time: Timestamp  # T: every document is written with version (T, 0)
    last_id: Any = None
    documents: int = 0  # handed out so far


@dataclass(frozen=True)
class TopicPosition:
    """Where a worker's share of the topics stands once a batch is written: the next
    offset of every (topic, partition) it read, the relay epochs it saw, and the backfill
    chunk it completes."""

    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    epochs: dict[int, int] = field(default_factory=dict)  # relay epoch per partition
    chunk: tuple[str, int] | None = None  # (index, chunk number)


@dataclass(slots=True)
class Change:
    """One document's change, read-only by convention: not a frozen dataclass, whose
    init cost 0.5 us more a change (several are made per change on the hot path)."""

    op: Literal["upsert", "delete"]
    doc_id: Any  # the MongoDB _id
    version: int
    cluster_time: Timestamp
    document: Mapping[str, Any] | None = None
    problem: str | None = None  # set by the source: this change cannot be indexed (why)
    # BSON size of the document: a source that read the raw bytes passes it, otherwise it
    # is measured here, once (it bounds the batch and is checked against
    # max_document_bytes)
    size_bytes: int = -1

    def __post_init__(self) -> None:
        if self.size_bytes < 0:
            self.size_bytes = len(bson.encode(self.document)) \
                if self.document is not None else 0


@dataclass
class Batch:
    changes: list[Change] = field(default_factory=list)
    # resume here once acknowledged
    position: Position | SnapshotPosition | TopicPosition | None = None
    # everything MongoDB held up to this cluster time is in the index once this batch is
    # acknowledged: the last change's time, or the server's time when the stream was idle
    watermark: Timestamp | None = None
    idle: bool = False  # nothing was pending behind this position
    last: bool = False  # the source has nothing more (a finished snapshot)
    skipped: int = 0  # updates of documents deleted before the lookup
    size_bytes: int = 0
    targets: list[Target] | None = None  # only these (a backfill chunk), not the job's


class Source(Protocol):
    """A stream of batches: the change stream, or a snapshot scan for a backfill."""

    def poll(self, max_docs: int, max_bytes: int, max_wait_s: float) -> Batch: ...

    def close(self) -> None: ...


_KIND_NAMES = {type(None): "null", bool: "boolean", float: "floating-point",
               dict: "sub-document", bytes: "binary", bson.Binary: "binary",
               datetime: "date", bson.Decimal128: "decimal"}


def id_problem(doc_id: Any) -> str | None:
    """Why ``doc_id`` cannot be an Elasticsearch id, or None if it can."""
    if not isinstance(doc_id, ID_TYPES) or isinstance(doc_id, bool):
        kind = _KIND_NAMES.get(type(doc_id), type(doc_id).__name__)
        return (f"_id: {kind} ids are not supported (use a string, an integer or an "
                "ObjectId)")
    problem = id_text_problem(doc_id) if isinstance(doc_id, str) else None
    return f"_id: {problem}" if problem else None


def id_kind(doc_id: Any) -> str:
    """``string``, ``integer`` or ``objectid``: ids of two kinds can share a text (1 and
    "1"), so a catalog's ids must all be of one."""
    if isinstance(doc_id, bson.ObjectId):
        return "objectid"
    return "integer" if isinstance(doc_id, int) else "string"


def es_id(doc_id: Any) -> str:
    """Elasticsearch ids are strings: the text of the _id (one kind per catalog)."""
    return str(doc_id)
