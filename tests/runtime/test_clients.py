"""The _bulk body esrec's Elasticsearch client writes (no server)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import orjson
import pytest
from elastic_transport import NdjsonSerializer, SerializationError

from runtime.clients import OrjsonNdjsonSerializer


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
    plain = [{"index": {"_id": "a"}}, {"n": 1.5}]
    assert OrjsonNdjsonSerializer().dumps(plain) == NdjsonSerializer().dumps(plain)
    assert OrjsonNdjsonSerializer().dumps(b'{"q": 1}') == b'{"q": 1}\n'


def test_what_json_cannot_hold_is_a_serialization_error() -> None:
    with pytest.raises(SerializationError):
        OrjsonNdjsonSerializer().dumps([{"x": object()}])
