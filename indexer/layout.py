"""The index layout every esrec component agrees on.

    <prefix>-<model>-<version>-g<generation>   concrete index, one per build of a version
    <prefix>-<model>-<version>                 version alias -> the current generation
    <serving alias>                            -> the concrete index recall uses

A concrete index's mapping ``_meta`` names its model version, so a reader that resolved
an alias knows which user tower may query it (never mix vector spaces). Deleted items
stay as versioned tombstones (``deleted: true``, no vector): real Elasticsearch forgets a
delete's version after ``index.gc_deletes`` (60 s), shorter than a backfill can take,
and an older backfill write must never resurrect a deleted item.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
from elasticsearch import Elasticsearch, NotFoundError

from runtime.errors import Refused
from towers.manifest import Manifest

VECTOR = "vector"
DELETED = "deleted"
VERSION = "source_version"
LIVE = {"bool": {"must_not": {"term": {DELETED: True}}}}  # every query filters tombstones

_UNSAFE = re.compile(r"[^a-z0-9._-]+")


class AliasError(Refused):
    """An alias esrec manages that does not point at exactly one index."""


def version_alias(prefix: str, model_name: str, version: str) -> str:
    return _UNSAFE.sub("-", f"{prefix}-{model_name}-{version}".lower())


def generation_index(prefix: str, model_name: str, version: str, generation: int) -> str:
    return f"{version_alias(prefix, model_name, version)}-g{generation}"


def mapping(manifest: Manifest, sha256: str, projection: Mapping[str, str],
            index_options: str, measured: Mapping[str, Any] | None = None) -> dict[str, Any]:
    properties: dict[str, Any] = {
        name: {"type": es_type} for name, es_type in projection.items()
    }
    properties.update({
        VECTOR: {"type": "dense_vector", "dims": manifest.dims, "index": True,
                 "similarity": manifest.similarity,
                 # explicit: 8.14+ would default to int8_hnsw, which quantizes scores
                 "index_options": {"type": index_options}},
        DELETED: {"type": "boolean"},
        VERSION: {"type": "long"},
        "indexed_at": {"type": "date"},
    })
    return {
        "dynamic": False,
        "_meta": {"model_name": manifest.name, "model_version": manifest.version,
                  "model": manifest.ref, "dims": manifest.dims,
                  "similarity": manifest.similarity, "artifact_sha256": sha256,
                  "index_options": index_options, **(measured or {})},
        "properties": properties,
    }


def create_generation(es: Elasticsearch, prefix: str, manifest: Manifest, sha256: str,
                      projection: Mapping[str, str], index_options: str,
                      measured: Mapping[str, Any] | None,
                      refresh_interval: str) -> str:
    """Create the next concrete index of a version; the version alias is not moved here."""
    alias = version_alias(prefix, manifest.name, manifest.version)
    existing = es.indices.get(index=f"{alias}-g*", allow_no_indices=True,
                              expand_wildcards="open")
    generation = 1 + max((int(name.rsplit("-g", 1)[1]) for name in existing), default=0)
    index = generation_index(prefix, manifest.name, manifest.version, generation)
    es.indices.create(index=index, mappings=mapping(manifest, sha256, projection,
                                                     index_options, measured),
                      settings={"index": {"refresh_interval": refresh_interval}})
    return index


def resolve_alias(es: Elasticsearch, alias: str) -> str | None:
    """The single concrete index behind ``alias``, or None if it does not exist."""
    try:
        indices = list(es.indices.get_alias(name=alias))
    except NotFoundError:
        return None
    return _single(alias, indices)


def indices_behind(es: Elasticsearch, prefix: str, aliases: Iterable[str]) -> dict[str, str]:
    """Each of ``aliases`` (version aliases under ``prefix``) that exists -> its single
    concrete index, in one request (a follower reads them every interval; a request per
    version was most of an idle worker's CPU)."""
    wanted = set(aliases)
    if not wanted:
        return {}
    behind: dict[str, list[str]] = {}
    pattern = version_alias(prefix, "", "").rstrip("-") + "-*"
    for index, entry in es.indices.get_alias(name=pattern).items():  # none matched: {}
        for alias in entry.get("aliases", {}):
            if alias in wanted:
                behind.setdefault(alias, []).append(index)
    return {alias: index for alias, indices in behind.items()
            if (index := _single(alias, indices)) is not None}


def _single(alias: str, indices: list[str]) -> str | None:
    if len(indices) > 1:
        raise AliasError(f"alias {alias} points at {len(indices)} indices ({', '.join(indices)});"
                         " esrec expects exactly one",
                         "point it at one: esrec models promote NAME@V (or remove the others "
                         "from it with POST _aliases)")
    return indices[0] if indices else None


def switch_alias(es: Elasticsearch, alias: str, new_index: str) -> str | None:
    """Point ``alias`` at ``new_index`` in one atomic call; returns the previous index."""
    previous = resolve_alias(es, alias)
    actions: list[dict[str, Any]] = []
    if previous is not None and previous != new_index:
        actions.append({"remove": {"index": previous, "alias": alias, "must_exist": True}})
    actions.append({"add": {"index": new_index, "alias": alias}})
    es.indices.update_aliases(actions=actions)
    return previous


def delete_indices(es: Elasticsearch, pattern: str) -> list[str]:
    """Delete the indices matching ``pattern``; returns their names. By name, because
    Elasticsearch 8 refuses wildcard deletes (action.destructive_requires_name)."""
    names = list(es.indices.get(index=pattern, allow_no_indices=True, expand_wildcards="open"))
    if names:
        es.indices.delete(index=",".join(names))
    return names


def knn_clause(vector: np.ndarray, k: int, num_candidates: int,
               query_filter: Mapping[str, Any] = LIVE,
               similarity: float | None = None) -> dict[str, Any]:
    """A kNN search on the item vectors; the default filter keeps tombstones out.
    ``similarity``: the least raw similarity (a dot product here) a hit may have, applied
    by Elasticsearch (8.8+), so that hits under it never travel."""
    clause = {"field": VECTOR, "query_vector": vector.tolist(), "k": k,
              "num_candidates": num_candidates, "filter": query_filter}
    if similarity is not None:
        clause["similarity"] = similarity
    return clause


def model_of(es: Elasticsearch, index: str) -> dict[str, Any]:
    """The ``_meta`` of a concrete index: which model version built it."""
    meta: dict[str, Any] = es.indices.get_mapping(index=index)[index]["mappings"].get(
        "_meta", {})
    return meta


def item_document(vector: Sequence[float], projected: Mapping[str, Any], version: int,
                  indexed_at: str) -> dict[str, Any]:
    """The indexed form of an item (a numpy vector is fine: the client serializes it);
    ``indexed_at``: ISO-8601, one per batch."""
    return {**projected, VECTOR: vector, DELETED: False, VERSION: version,
            "indexed_at": indexed_at}


def tombstone(version: int, indexed_at: str) -> dict[str, Any]:
    return {DELETED: True, VERSION: version, "indexed_at": indexed_at}


def purge_tombstones(es: Elasticsearch, index: str, older_than: datetime) -> int:
    """Delete tombstones indexed before ``older_than``; returns how many went."""
    es.indices.refresh(index=index)  # delete_by_query only sees what search sees
    response = es.delete_by_query(index=index, refresh=True, conflicts="proceed", query={
        "bool": {"filter": [{"term": {DELETED: True}},
                            {"range": {"indexed_at": {"lt": older_than.isoformat()}}}]}})
    return int(response["deleted"])
