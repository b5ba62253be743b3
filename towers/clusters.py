"""User clusters of one model version: k-means on its user vectors, re-centred as users act.

    build     k-means++ seeding, then Lloyd iterations on the user vectors of version V
    refresh   mini-batch k-means (Sculley 2010): each centroid moves toward the vectors of
              the users active since the last run, by 1 / (its running count): no retrain
    assign    the nearest centroid of a user vector (same version's centroids only)

A cluster set is immutable once published (``sha256`` over its centroids); a refresh
publishes the next generation of the same version with the cluster ids kept, so its
``lineage`` (the version and the generation its k-means build made) stays the same and
the per-cluster popularity kept under it stays meaningful. A build starts a new lineage.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.errors import Refused

MIN_USERS_PER_CLUSTER = 50  # the default k leaves about this many users per cluster at least
MAX_DEFAULT_K = 256


class ClusterError(Refused):
    """A cluster set that cannot be made, or a stored one that is corrupt."""


def default_k(users: int) -> int:
    """sqrt(n / 2) (the old rule of thumb), at most one cluster per MIN_USERS_PER_CLUSTER
    users and at most MAX_DEFAULT_K: 2000 users -> 31, 100k -> 223."""
    if users < 2:
        return 1
    return max(1, min(MAX_DEFAULT_K, round(math.sqrt(users / 2)),
                      users // MIN_USERS_PER_CLUSTER))


def _squared_distances(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    distances: np.ndarray = np.maximum((vectors ** 2).sum(1)[:, None] - 2 * vectors @ centroids.T
                                       + (centroids ** 2).sum(1)[None, :], 0.0)
    return distances


def assign(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The index of each row's nearest centroid (squared Euclidean)."""
    # |v - c|^2 = |v|^2 - 2 v.c + |c|^2; |v|^2 is the same for every centroid of a row
    return np.asarray(np.argmax(2 * vectors @ centroids.T - (centroids ** 2).sum(1), axis=1))


def _plus_plus(vectors: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next centre drawn with probability ~ distance^2."""
    centres = [vectors[rng.integers(len(vectors))]]
    nearest = _squared_distances(vectors, np.asarray(centres))[:, 0]
    for _ in range(1, k):
        total = nearest.sum()
        pick = rng.integers(len(vectors)) if total <= 0 else rng.choice(
            len(vectors), p=nearest / total)
        centres.append(vectors[pick])
        nearest = np.minimum(nearest, _squared_distances(vectors, vectors[pick][None])[:, 0])
    return np.asarray(centres, np.float32)


@dataclass
class ClusterSet:
    """Centroids of one model version's user vectors, with what built them."""

    model: str  # name@version whose user tower made the vectors
    centroids: np.ndarray  # (k, dims) float32
    counts: np.ndarray  # (k,) users each centroid has absorbed (mini-batch learning rates)
    generation: int = 1
    basis: int = 1  # the generation of the k-means build this one descends from
    inertia: float = 0.0  # mean squared distance of the users to their centroid
    users: int = 0  # users in the last build or refresh
    moved: dict[str, float] = field(default_factory=dict)  # refresh: how far centroids moved

    @property
    def k(self) -> int:
        return len(self.centroids)

    @property
    def lineage(self) -> str:
        """What per-cluster counts are kept under: the version and the build whose
        cluster ids they mean."""
        return f"{self.model}#g{self.basis}"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.centroids, np.float32).tobytes()
                              ).hexdigest()

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        return assign(np.asarray(vectors, np.float32), self.centroids)

    def sizes(self, vectors: np.ndarray) -> list[int]:
        return np.bincount(self.assign(vectors), minlength=self.k).tolist() if len(
            vectors) else [0] * self.k

    def report(self) -> dict[str, Any]:
        """What a build or refresh prints: k, inertia, sizes' spread, movement."""
        return {"model": self.model, "generation": self.generation, "lineage": self.lineage,
                "k": self.k, "users": self.users, "inertia": round(self.inertia, 6),
                "sha256": self.sha256, **({"moved": self.moved} if self.moved else {})}

    def to_document(self) -> dict[str, Any]:
        return {"model": self.model, "generation": self.generation, "basis": self.basis,
                "k": self.k, "dims": int(self.centroids.shape[1]),
                "centroids": np.ascontiguousarray(self.centroids, np.float32).tobytes(),
                "counts": self.counts.astype(np.float64).tolist(), "inertia": self.inertia,
                "users": self.users, "moved": self.moved, "sha256": self.sha256}

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> ClusterSet:
        centroids = np.frombuffer(document["centroids"], np.float32).reshape(
            document["k"], document["dims"]).copy()
        clusters = cls(document["model"], centroids, np.asarray(document["counts"]),
                       document["generation"], document["basis"], document["inertia"],
                       document["users"], dict(document.get("moved") or {}))
        if clusters.sha256 != document["sha256"]:
            raise ClusterError(f"cluster set {document['model']} generation "
                               f"{document['generation']} is corrupt (sha256 mismatch)",
                               f"build a new generation: esrec recall clusters build "
                               f"{document['model']}")
        return clusters


def kmeans(model: str, vectors: np.ndarray, k: int, seed: int = 0,
           iterations: int = 50, tolerance: float = 1e-6) -> ClusterSet:
    """Lloyd's k-means from k-means++ seeds; an emptied cluster is re-seeded at the point
    farthest from its centroid, so every one of the k clusters holds users."""
    vectors = np.asarray(vectors, np.float32)
    if len(vectors) < k:
        raise ClusterError(f"{len(vectors)} users cannot make {k} clusters",
                           f"ask for at most {len(vectors)} (--k)")
    rng = np.random.default_rng(seed)
    centroids = _plus_plus(vectors, k, rng)
    previous = math.inf
    for _ in range(iterations):
        distances = _squared_distances(vectors, centroids)
        labels = distances.argmin(1)
        inertia = float(distances[np.arange(len(vectors)), labels].mean())
        for cluster in range(k):
            members = vectors[labels == cluster]
            if len(members):
                centroids[cluster] = members.mean(0)
            else:
                farthest = int(distances[np.arange(len(vectors)), labels].argmax())
                centroids[cluster] = vectors[farthest]
                labels[farthest] = cluster
        if previous - inertia <= tolerance * max(previous, 1e-12):
            break
        previous = inertia
    labels = assign(vectors, centroids)
    inertia = float(((vectors - centroids[labels]) ** 2).sum(1).mean())
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    return ClusterSet(model, centroids, counts, inertia=inertia, users=len(vectors))


def refresh(clusters: ClusterSet, vectors: np.ndarray, batch: int = 1024) -> ClusterSet:
    """The next generation: mini-batch updates toward ``vectors`` (users active since the
    last run). A centroid's step is its new users over all it has absorbed, so a centroid
    built on many users moves little per newcomer and a young one follows quickly."""
    vectors = np.asarray(vectors, np.float32)
    centroids = clusters.centroids.copy()
    counts = clusters.counts.astype(np.float64).copy()
    for start in range(0, len(vectors), batch):
        part = vectors[start:start + batch]
        labels = assign(part, centroids)
        for cluster in np.unique(labels):
            members = part[labels == cluster]
            counts[cluster] += len(members)
            rate = len(members) / counts[cluster]
            centroids[cluster] = (1 - rate) * centroids[cluster] + rate * members.mean(0)
    shift = np.linalg.norm(centroids - clusters.centroids, axis=1)
    inertia = float(((vectors - centroids[assign(vectors, centroids)]) ** 2).sum(1).mean()
                    ) if len(vectors) else clusters.inertia
    return ClusterSet(clusters.model, centroids.astype(np.float32), counts,
                      clusters.generation + 1, clusters.basis, inertia, len(vectors),
                      {"max": round(float(shift.max(initial=0.0)), 6),
                       "mean": round(float(shift.mean()) if len(shift) else 0.0, 6),
                       "clusters_moved": int((shift > 0).sum())})
