"""Which index serves, and with which model version: never mix vector spaces.

A recall request resolves the serving alias to its concrete index, reads the model version
from that index's mapping ``_meta``, embeds the user with that version's user tower and
queries the concrete index, never the alias. An alias switch between the resolve and the
query therefore changes nothing for that request: the old index stays until retired.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from elasticsearch import Elasticsearch

from indexer.layout import model_of, resolve_alias
from recall.refresh import Refreshed
from runtime.errors import Refused, Unavailable
from towers.artifact import ModelArtifact
from towers.clusters import ClusterSet
from towers.registry import ModelRegistry

log = logging.getLogger("esrec.recall")


class NoServingVersion(Unavailable):
    """The serving alias points at nothing yet."""


class ServingUnavailable(Unavailable):
    """The serving index's model version cannot be loaded (missing, corrupt, not the
    artifact that built the index): recall answers 503 until it can."""


@dataclass(frozen=True)
class ServingVersion:
    index: str
    model: str  # name@version, from the index's _meta
    artifact: ModelArtifact
    clusters: ClusterSet | None = None  # the version's newest user clusters, if any


class ServingResolver:
    """The serving alias, re-resolved every ``ttl_s`` in the background (stale while
    revalidate, ``recall.refresh``); towers loaded once per version, its newest user
    clusters re-read with the alias. A cluster that cannot answer the lookup keeps the
    last version serving."""

    def __init__(self, es: Elasticsearch, registry: ModelRegistry, alias: str,
                 ttl_s: float = 1.0) -> None:
        self.es = es
        self.registry = registry
        self.alias = alias
        self._artifacts: dict[str, ModelArtifact] = {}
        self._serving = Refreshed(self._resolve, ttl_s, f"the serving alias {alias}")

    def current(self) -> ServingVersion:
        return self._serving.current()

    def _resolve(self, previous: ServingVersion | None) -> ServingVersion:
        """Look the alias up and load a new version's towers."""
        index = resolve_alias(self.es, self.alias)
        if index is None:
            raise NoServingVersion(f"the serving alias {self.alias} points at no index; "
                                   "promote a version (`esrec models roll NAME@VERSION`)")
        if previous is not None and previous.index == index:
            return self._with_clusters(previous)
        return self._with_clusters(self._load(index))

    def _with_clusters(self, version: ServingVersion) -> ServingVersion:
        """``version`` with its newest cluster generation; a set that cannot be read
        leaves the version without clusters (the cluster channel finds nothing), never
        without an answer."""
        try:
            latest = self.registry.clusters(version.model)
        except Refused as error:
            log.warning("cannot read the serving version's clusters", extra={
                "model": version.model, "error": str(error)})
            latest = None
        clusters = latest[0] if latest is not None else None
        if _generation(clusters) == _generation(version.clusters):
            return version
        return replace(version, clusters=clusters)

    def _load(self, index: str) -> ServingVersion:
        meta = model_of(self.es, index)
        model = meta.get("model")
        if not model:
            raise ServingUnavailable(f"index {index} names no model version in its _meta")
        artifact = self._artifacts.get(model)
        if artifact is None:
            try:
                artifact = self._artifacts[model] = self.registry.pull(model)
            except Refused as error:  # missing from the registry, corrupt, unloadable
                raise ServingUnavailable(f"cannot load {model} for {index}: {error}") from None
        if meta.get("artifact_sha256") not in (None, artifact.sha256):
            raise ServingUnavailable(f"index {index} was built by {model} sha256 "
                                     f"{meta['artifact_sha256'][:12]}, the registry has "
                                     f"{artifact.sha256[:12]}")
        return ServingVersion(index, model, artifact)


def _generation(clusters: ClusterSet | None) -> int | None:
    return None if clusters is None else clusters.generation
