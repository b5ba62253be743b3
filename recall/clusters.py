"""User clusters of a model version, from user state: built, refreshed, and tracked as
users act.

    build    every user's vector (the version's user tower over their state, as recall
             computes it) -> k-means (towers.clusters) -> a new generation in the
             registry; each cluster's popularity seeded from its users' recent events
    refresh  the users active since the newest generation -> mini-batch update -> the
             next generation (cluster ids kept)
    ClusterTracker (in `esrec recall events`): the acting users' vectors under every
             version that has clusters -> their clusters -> per-cluster item counts

Centroids of version V only ever meet user vectors of version V: each step looks the
version's own towers up, never the serving alias.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from recall.popularity import ClusterPopularity
from recall.refresh import Refreshed
from recall.state import UserEvent, UserStates
from runtime.errors import Refused
from towers.artifact import ModelArtifact
from towers.clusters import ClusterSet, default_k, kmeans, refresh
from towers.registry import ModelRegistry

log = logging.getLogger("esrec.recall.clusters")
TRACKED_STATES = ("published", "building", "ready", "canary", "serving")  # not retired/failed
VERSIONS_TTL_S = 10.0  # the events consumer re-reads which versions have clusters


class ClustersError(Refused):
    """Clusters that cannot be built or refreshed now, with what to do."""


def user_vectors(states: UserStates, artifact: ModelArtifact, since: datetime | None = None,
                 on_progress: Callable[[int], None] | None = None
                 ) -> tuple[list[str], np.ndarray]:
    """The ids and user-tower vectors of every user with state (changed since ``since``)."""
    ids: list[str] = []
    parts = []
    for documents in states.active_since(since):
        users = {user: document for user, document in documents.items() if document}
        if users:
            ids.extend(users)
            parts.append(artifact.embed_users(list(users.values())))
        if on_progress is not None:
            on_progress(len(ids))
    return ids, (np.concatenate(parts) if parts else
                 np.zeros((0, artifact.manifest.dims), np.float32))


def build(registry: ModelRegistry, states: UserStates, popularity: ClusterPopularity,
          ref: str, k: int | None = None, seed: int = 0,
          on_progress: Callable[[int], None] | None = None) -> ClusterSet:
    """k-means over every user's vector of ``ref``, published as the next generation and
    the start of a new lineage, whose per-cluster popularity starts from the users'
    stored recent events (so the channel has items before new events arrive)."""
    artifact = registry.pull(ref)
    ids, vectors = user_vectors(states, artifact, on_progress=on_progress)
    k = k or default_k(len(vectors))
    if len(vectors) < k:
        raise ClustersError(f"{len(vectors)} users with state cannot make {k} clusters",
                            "lower --k, or build once users have acted")
    clusters = kmeans(ref, vectors, k, seed)
    latest = registry.clusters(ref)
    clusters.generation = clusters.basis = 1 if latest is None else latest[0].generation + 1
    cluster_of = dict(zip(ids, clusters.assign(vectors).tolist(), strict=True))
    for events in states.recent_events():
        popularity.count(clusters.lineage, ((cluster_of[user], item, ts)
                                            for user, recent in events.items()
                                            if user in cluster_of for item, ts in recent))
    return registry.publish_clusters(clusters)


def refresh_clusters(registry: ModelRegistry, states: UserStates, ref: str,
                     on_progress: Callable[[int], None] | None = None) -> ClusterSet:
    """Move ``ref``'s newest centroids toward the users active since they were made."""
    latest = registry.clusters(ref)
    if latest is None:
        raise ClustersError(f"{ref} has no clusters yet", f"run `esrec recall clusters "
                                                          f"build {ref}` first")
    clusters, made_at = latest
    _, vectors = user_vectors(states, registry.pull(ref), made_at, on_progress)
    return registry.publish_clusters(refresh(clusters, vectors))


@dataclass(frozen=True)
class Clustered:
    """A model version with clusters: its towers and its newest centroids."""

    model: str
    artifact: ModelArtifact
    clusters: ClusterSet


class ClusterTracker:
    """Counts each newly applied event in the acting user's cluster, under every model
    version that has clusters (the serving one, and any other that may serve next)."""

    def __init__(self, registry: ModelRegistry, states: UserStates,
                 popularity: ClusterPopularity, ttl_s: float = VERSIONS_TTL_S) -> None:
        self.registry = registry
        self.states = states
        self.popularity = popularity
        self._versions = Refreshed(self._load, ttl_s, "the versions with clusters")

    def _load(self, previous: list[Clustered] | None) -> list[Clustered]:
        known = {(v.model, v.clusters.generation): v for v in previous or []}
        versions = []
        for record in self.registry.list():
            if record.state not in TRACKED_STATES:
                continue
            latest = self.registry.clusters(record.ref)
            if latest is None:
                continue
            clusters = latest[0]
            version = known.get((record.ref, clusters.generation))
            if version is None:
                try:
                    version = Clustered(record.ref, self.registry.pull(record.ref), clusters)
                except Refused as error:  # missing or corrupt: the other versions go on
                    log.warning("not counting clusters of a version", extra={
                        "model": record.ref, "error": str(error)})
                    continue
            versions.append(version)
        return versions

    def count(self, events: Sequence[UserEvent]) -> int:
        """Fold ``events`` into their users' clusters of every version; returns the
        versions counted for."""
        if not events:
            return 0
        versions = self._versions.current()
        if not versions:
            return 0
        users = list(dict.fromkeys(event.user_id for event in events))
        documents = self.states.documents(users)
        for version in versions:
            vectors = version.artifact.embed_users([documents[user] for user in users])
            cluster_of = dict(zip(users, version.clusters.assign(vectors).tolist(),
                                  strict=True))
            self.popularity.count(version.clusters.lineage, (
                (cluster_of[event.user_id], event.item_id, event.ts.timestamp())
                for event in events))
        return len(versions)
