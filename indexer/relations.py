"""Items joined with their related documents from MongoDB before the item tower.

A version's feature spec declares its relations (``towers.relations``); the pipeline and
the vectors gate embed through ``embed`` here, so every path joins the same way, with
one ``$in`` read per relation and batch. The change stream follows the related
collections and re-embeds the items a related change touches (``indexer.source``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.clients import MongoDatabase
from towers.manifest import Manifest
from towers.relations import Relation, attach

if TYPE_CHECKING:
    from towers.artifact import ModelArtifact


class Related:
    def __init__(self, db: MongoDatabase) -> None:
        self.db = db

    def enrich(self, relations: Sequence[Relation],
               documents: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        joined = [dict(document) for document in documents]
        for relation in relations:
            keys = list({key for document in joined
                         if _hashable(key := document.get(relation.local_field))})
            found = {relation.key_of(doc): doc for doc in self.db[relation.collection].find(
                {relation.foreign_field: {"$in": keys}})} if keys else {}
            joined = attach(joined, relation, found)
        return joined


def embed(artifact: ModelArtifact, documents: Sequence[Mapping[str, Any]],
          related: Related | None) -> np.ndarray:
    """The version's item vectors of ``documents``, joined first as its spec says."""
    relations = artifact.manifest.feature_spec.relations
    if relations and related is not None:
        documents = related.enrich(relations, documents)
    return artifact.embed_items(documents)


def relations_of(manifests: Sequence[Manifest]) -> list[Relation]:
    """Every relation the given versions declare (what the stream must follow)."""
    return list({relation: None for manifest in manifests
                 for relation in manifest.feature_spec.relations})


def _hashable(value: Any) -> bool:
    if value is None:
        return False
    try:
        hash(value)
    except TypeError:
        return False
    return True
