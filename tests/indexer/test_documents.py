"""Poison documents get a specific reason, before they cost a tower call or a bulk request."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import bson
import orjson
import pytest
from bson import ObjectId

from indexer.documents import DocumentRejected, Projection
from indexer.settings import IndexerSettings

SETTINGS = IndexerSettings(required_fields=["title"], max_document_bytes=10_000)
project = Projection(SETTINGS)
GOOD = {"_id": "a", "title": "t", "tags": ["x", "y"], "category": "c", "price": 3,
        "created_at": datetime(2026, 1, 1, tzinfo=UTC), "popularity": 1.5, "extra": {"n": 1}}


def _sized(document: dict) -> tuple[dict, int]:
    """A document and its BSON size, as the source measures it."""
    return document, len(bson.encode(document))


def test_good_document_is_projected() -> None:
    projected = project(*_sized(GOOD))
    assert projected == {"title": "t", "tags": ["x", "y"], "category": "c", "price": 3,
                         "created_at": GOOD["created_at"], "popularity": 1.5}
    # a date goes to the _bulk body as ISO-8601, written by orjson
    assert orjson.loads(orjson.dumps(projected))["created_at"] == "2026-01-01T00:00:00+00:00"
    assert project(*_sized({**GOOD, "_id": ObjectId(), "price": None}))["title"] == "t"


@pytest.mark.parametrize(("change", "reason"), [
    ({"price": math.nan}, "price: expected a finite number, got nan"),
    ({"price": math.inf}, "price: expected a finite number, got inf"),
    ({"price": "12"}, "price: expected a finite number, got '12'"),
    ({"price": True}, "price: expected a finite number, got True"),
    ({"tags": ["x", 3]}, "tags: expected text, got int"),
    ({"title": {"en": "t"}}, "title: expected text, got dict"),
    ({"created_at": "yesterday"}, "created_at: 'yesterday' is not an ISO-8601 date"),
    ({"title": None}, "title: required field is missing"),
    ({"tags": ["ok", "nul\x00inside"]}, "tags: a tag must not contain control characters"),
    ({"tags": ["ok", ""]}, "tags: a tag must have 1 to 256 characters"),
    ({"blob": "x" * 20_000}, "over max_document_bytes"),
])
def test_poison_documents_name_the_field(change: dict, reason: str) -> None:
    with pytest.raises(DocumentRejected) as raised:
        project(*_sized({**GOOD, **change}))
    assert reason in str(raised.value)


TYPED = Projection(IndexerSettings(projection={
    "count": "long", "flag": "boolean", "seen": "date", "names": "text", "tags": "keyword"}))


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("count", 2.5, "count: expected a whole number, got 2.5"),
    ("count", "3", "count: expected a finite number, got '3'"),
    ("flag", 1, "flag: expected true/false, got 1"),
    ("seen", True, "seen: expected a date, got True"),
    ("seen", [1], "seen: expected a date, got [1]"),
    ("names", ["a", None], "names: expected text, got NoneType"),
    ("tags", "x\ny", "tags: a tag must not contain control characters"),
])
def test_each_projected_type_names_a_bad_value(field: str, value: object, reason: str) -> None:
    with pytest.raises(DocumentRejected) as raised:
        TYPED(*_sized({"_id": "a", field: value}))
    assert reason in str(raised.value)


def test_each_projected_type_keeps_a_good_value_as_it_is() -> None:
    document = {"_id": "a", "count": 3, "flag": False, "seen": 1.7e9, "names": ["a", "b"],
                "tags": "one", "other": "not projected"}
    assert TYPED(*_sized(document)) == {
        "count": 3, "flag": False, "seen": 1.7e9, "names": ["a", "b"], "tags": "one"}
    assert TYPED(*_sized({"_id": "b", "seen": "2026-01-01T00:00:00"}))["seen"] == \
        "2026-01-01T00:00:00"
