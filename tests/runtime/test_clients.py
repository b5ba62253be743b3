"""The _bulk body esrec's Elasticsearch client writes, and client errors as esrec's kinds
(no server)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import orjson
import pytest
from elastic_transport import NdjsonSerializer, SerializationError

from runtime.clients import OrjsonNdjsonSerializer, UtcOrjsonSerializer


def test_a_bulk_body_is_one_json_line_per_operation_as_the_library_writes_it() -> None:
    vector = np.array([0.25, -1.5, 3.0], np.float32)
    lines: list[object] = [{"index": {"_index": "i", "_id": "a", "version": 7}},
                           {"vector": vector, "at": datetime(2025, 1, 2, tzinfo=UTC),
                            "tags": ["x"], "ok": True}, '{"raw": 1}', b'{"bytes": 2}\n']
    body = OrjsonNdjsonSerializer().dumps(lines)
    assert body.endswith(b"\n")
    assert [orjson.loads(line) for line in body.splitlines()] == [
        {"index": {"_index": "i", "_id": "a", "version": 7}},
        {"vector": [0.25, -1.5, 3.0], "at": "2025-01-02T00:00:00+00:00", "tags": ["x"],
         "ok": True}, {"raw": 1}, {"bytes": 2}]
    naive = OrjsonNdjsonSerializer().dumps([{"at": datetime(2025, 1, 2)}])  # BSON: UTC
    assert naive == b'{"at":"2025-01-02T00:00:00+00:00"}\n'
    assert UtcOrjsonSerializer().dumps({"at": datetime(2025, 1, 2)}) == naive.strip()
    plain = [{"index": {"_id": "a"}}, {"n": 1.5}]
    assert OrjsonNdjsonSerializer().dumps(plain) == NdjsonSerializer().dumps(plain)
    assert OrjsonNdjsonSerializer().dumps(b'{"q": 1}') == b'{"q": 1}\n'


def test_what_json_cannot_hold_is_a_serialization_error() -> None:
    with pytest.raises(SerializationError):
        OrjsonNdjsonSerializer().dumps([{"x": object()}])


def _api_error(status: int) -> Exception:
    from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig
    from elasticsearch import ApiError

    meta = ApiResponseMeta(status=status, http_version="1.1", headers=HttpHeaders(),
                           duration=0.0, node=NodeConfig("http", "localhost", 9200))
    return ApiError("refused", meta=meta, body={})


def test_client_errors_become_esrecs_kinds() -> None:
    from kafka.errors import KafkaConnectionError
    from pymongo.errors import OperationFailure, ServerSelectionTimeoutError

    from runtime.clients import server_error
    from runtime.errors import Refused, Unavailable

    cases: list[tuple[Exception, type | None]] = [
        (_api_error(503), Unavailable), (_api_error(429), Unavailable),
        (_api_error(400), Refused), (OperationFailure("bad", code=2), Refused),
        (ServerSelectionTimeoutError("no primary"), Unavailable),
        (KafkaConnectionError(), Unavailable), (ValueError("ours"), None)]
    for error, kind in cases:
        known = server_error(error)
        assert (type(known) if known is not None else None) is kind, error
