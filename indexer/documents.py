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
# the value type that is valid as it is for a field of each type (no check, no call)
_PLAIN: dict[str, type] = {"keyword": str, "text": str, "boolean": bool, "date": datetime}


def _finite_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _check(field: str, es_type: str, value: Any) -> Any:
    """The value to index for ``field``, or DocumentRejected."""
    if es_type in _TEXT:  # a text, or a list of them
        for item in value if isinstance(value, list) else (value,):
            if not isinstance(item, str):
                raise DocumentRejected(f"{field}: expected text, got {type(item).__name__}")
            if field == ITEM_TAGS_FIELD and (problem := tag_problem(item)):
                raise DocumentRejected(f"{field}: {problem}, got {item[:40]!r}")
    elif es_type in ("float", "long"):
        if not _finite_number(value):
            raise DocumentRejected(f"{field}: expected a finite number, got {value!r}")
        if es_type == "long" and not float(value).is_integer():
            raise DocumentRejected(f"{field}: expected a whole number, got {value!r}")
    elif es_type == "boolean":
        if not isinstance(value, bool):
            raise DocumentRejected(f"{field}: expected true/false, got {value!r}")
    elif isinstance(value, str):  # a date: a datetime goes as it is (orjson writes ISO-8601)
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise DocumentRejected(f"{field}: {value!r} is not an ISO-8601 date") from None
    elif not isinstance(value, datetime) and not _finite_number(value):
        raise DocumentRejected(f"{field}: expected a date, got {value!r}")
    return value


class Projection:
    """The checks and the projected fields of one settings, planned once: a value of its
    field's plain type (a text, a bool, a datetime) goes as it is, without a call; the
    rest (numbers, lists, tags, anything odd) through the full check."""

    def __init__(self, settings: IndexerSettings) -> None:
        self.max_bytes = settings.max_document_bytes
        self.required = list(settings.required_fields)
        self.fields = [(field, es_type, None if field == ITEM_TAGS_FIELD else _PLAIN.get(es_type))
                       for field, es_type in settings.projection.items()]

    def __call__(self, document: Mapping[str, Any], size: int) -> dict[str, Any]:
        """The projected fields of a valid document of ``size`` BSON bytes (its ``_id``
        was checked by the source); raises DocumentRejected otherwise."""
        if size > self.max_bytes:
            raise DocumentRejected(f"document is {size} bytes, over max_document_bytes "
                                   f"({self.max_bytes})")
        for field in self.required:
            if document.get(field) is None:
                raise DocumentRejected(f"{field}: required field is missing")
        projected = {}
        for field, es_type, plain in self.fields:
            value = document.get(field)
            if value is not None:
                projected[field] = value if type(value) is plain \
                    else _check(field, es_type, value)
        return projected
