"""Which index serves, and with which model version: never mix vector spaces.

A recall request resolves the serving alias to its concrete index, reads the model version
from that index's mapping ``_meta``, embeds the user with that version's user tower and
queries the concrete index, never the alias. An alias switch between the resolve and the
query therefore changes nothing for that request: the old index stays until retired.

While a canary roll runs (indexer.canary), its share of users is routed to the
candidate's own index and towers instead, by a stable hash of the user: still one
version per request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from elasticsearch import Elasticsearch

from indexer.canary_store import Arm, Canary, CanaryStore
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


@dataclass(frozen=True)
class Routes:
    """Where requests go: the serving alias's version, and a running canary's candidate."""

    serving: ServingVersion
    canary: Canary | None = None
    candidate: ServingVersion | None = None


@dataclass(frozen=True)
class Route:
    """One request's version, and its canary arm if a canary splits the traffic."""

    version: ServingVersion
    canary: Canary | None = None
    arm: Arm | None = None


class ServingResolver:
    """The serving alias and the running canary, re-read every ``ttl_s`` in the
    background (stale while revalidate, ``recall.refresh``); towers loaded once per
    version, its newest user clusters re-read with the alias. A cluster that cannot
    answer the lookup keeps the last version serving."""

    def __init__(self, es: Elasticsearch, registry: ModelRegistry, alias: str,
                 ttl_s: float = 1.0, canaries: CanaryStore | None = None) -> None:
        self.es = es
        self.registry = registry
        self.alias = alias
        self.canaries = canaries
        self._artifacts: dict[str, ModelArtifact] = {}
        self._routes = Refreshed(self._resolve, ttl_s, f"the serving alias {alias}")

    def current(self) -> ServingVersion:
        """The version the serving alias points at."""
        return self._routes.current().serving

    def canary(self) -> Canary | None:
        """The latest canary, as recall last read it."""
        return self._routes.current().canary

    def route(self, user_id: str) -> Route:
        """The version that answers ``user_id`` now."""
        routes = self._routes.current()
        canary, candidate = routes.canary, routes.candidate
        if canary is None or candidate is None or not canary.running():
            return Route(routes.serving)
        arm = canary.arm(user_id)
        return Route(candidate if arm == "candidate" else routes.serving, canary, arm)

    def _resolve(self, previous: Routes | None) -> Routes:
        """Look the alias and the canary up; load a new version's towers."""
        index = resolve_alias(self.es, self.alias)
        if index is None:
            raise NoServingVersion(f"the serving alias {self.alias} points at no index; "
                                   "promote a version (`esrec models roll NAME@VERSION`)")
        serving = self._version(index, previous.serving if previous else None)
        canary = self.canaries.current() if self.canaries is not None else None
        if canary is None or not canary.running():
            return Routes(serving, canary)
        try:
            candidate = self._version(canary.candidate_index,
                                      previous.candidate if previous else None)
        except (Refused, Unavailable) as error:  # the candidate only: serving goes on
            log.warning("cannot load the canary's candidate; serving it nobody", extra={
                "model": canary.candidate, "error": str(error)})
            return Routes(serving, canary)
        return Routes(serving, canary, candidate)

    def _version(self, index: str, previous: ServingVersion | None) -> ServingVersion:
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
