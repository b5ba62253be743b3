"""Related collections: item features that live in another document.

A relation declared in the feature spec, e.g. ``items.category_id -> categories._id as
category``, puts the related document into the item under ``as`` before featurization,
so a feature can read ``category.name``. Training enriches from the dataset's related
collections, the indexer from MongoDB at featurize time (``indexer.relations``), with
this one function: the towers see the same document either way. Because the version
declares its relations, the indexer knows which collections to follow: a change in a
related document re-embeds the items that point at it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Relation(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    collection: str = Field(min_length=1)  # the related collection
    local_field: str = Field(min_length=1)  # in the item: the key it points with
    foreign_field: str = "_id"  # in the related document
    as_field: str = Field(min_length=1, alias="as")  # where the related document goes

    def key_of(self, document: Mapping[str, Any]) -> Any:
        return document.get(self.foreign_field)


def attach(items: Iterable[Mapping[str, Any]], relation: Relation,
           related_by_key: Mapping[Any, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The items, each with its related document (or none) under ``relation.as_field``."""
    enriched = []
    for item in items:
        found = related_by_key.get(_hashable(item.get(relation.local_field)))
        copy = {key: value for key, value in item.items() if key != relation.as_field}
        if found is not None:
            copy[relation.as_field] = dict(found)
        enriched.append(copy)
    return enriched


def enrich(items: Sequence[Mapping[str, Any]], relations: Sequence[Relation],
           related: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Every relation applied from in-memory related collections (training)."""
    documents = [dict(item) for item in items]
    for relation in relations:
        by_key = {_hashable(relation.key_of(doc)): doc
                  for doc in related.get(relation.collection, [])}
        documents = attach(documents, relation, by_key)
    return documents


def _hashable(value: Any) -> Any:
    """A key usable in a dict (an unhashable value matches nothing)."""
    try:
        hash(value)
    except TypeError:
        return None
    return value
