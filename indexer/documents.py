"""Checking a source document before it costs a tower call or poisons a bulk request.

One NaN in a bulk body makes Elasticsearch reject the whole request, so every projected
value is checked against its declared type here, and a document that fails goes to dead
letters with a reason a person can act on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from indexer.settings import IndexerSettings
from runtime.errors import Refused
from towers.dataset import ITEM_TAGS_FIELD, tag_problem


class DocumentRejected(Refused):
    """A document esrec cannot index as it is; the message says which field and why."""


_TEXT = ("keyword", "text")


def _finite_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _check(field: str, es_type: str, value: Any) -> Any:
    """The value to index for ``field``, or DocumentRejected."""
    kind = type(value)  # the common, valid cases first: no per-value loop (hot path)
    if (kind is str and es_type in _TEXT and field != ITEM_TAGS_FIELD) or (
            kind is float and es_type == "float" and math.isfinite(value)) or (
            kind is bool and es_type == "boolean") or (kind is datetime and es_type == "date"):
        return value  # a datetime goes as it is: orjson writes it as ISO-8601 in C
    values = value if isinstance(value, list) and es_type in _TEXT else [value]
    for item in values:
        if es_type in _TEXT and not isinstance(item, str):
            raise DocumentRejected(f"{field}: expected text, got {type(item).__name__}")
        if field == ITEM_TAGS_FIELD and (problem := tag_problem(item)):
            raise DocumentRejected(f"{field}: {problem}, got {item[:40]!r}")
        if es_type in ("float", "long"):
            if not _finite_number(item):
                raise DocumentRejected(f"{field}: expected a finite number, got {item!r}")
            if es_type == "long" and not float(item).is_integer():
                raise DocumentRejected(f"{field}: expected a whole number, got {item!r}")
        if es_type == "boolean" and not isinstance(item, bool):
            raise DocumentRejected(f"{field}: expected true/false, got {item!r}")
        if es_type == "date":
            if isinstance(item, datetime):
                return item
            if isinstance(item, str):
                try:
                    datetime.fromisoformat(item)
                except ValueError:
                    raise DocumentRejected(f"{field}: {item!r} is not an ISO-8601 date") from None
            elif not _finite_number(item):
                raise DocumentRejected(f"{field}: expected a date, got {item!r}")
    return value


def project(document: Mapping[str, Any], size: int,
            settings: IndexerSettings) -> dict[str, Any]:
    """The projected fields of a valid document of ``size`` BSON bytes (its ``_id`` was
    checked by the source); raises DocumentRejected otherwise."""
    if size > settings.max_document_bytes:
        raise DocumentRejected(f"document is {size} bytes, over max_document_bytes "
                               f"({settings.max_document_bytes})")
    for field in settings.required_fields:
        if document.get(field) is None:
            raise DocumentRejected(f"{field}: required field is missing")
    return {field: _check(field, es_type, document[field])
            for field, es_type in settings.projection.items()
            if document.get(field) is not None}
