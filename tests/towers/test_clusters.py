"""k-means on user vectors: planted groups found, every cluster used, a refresh that
follows new data without a rebuild, and a stored set that refuses corruption."""

from __future__ import annotations

import numpy as np
import pytest

from towers.clusters import ClusterError, ClusterSet, default_k, kmeans, refresh


def _groups(centres: np.ndarray, per: int, seed: int, spread: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    points = np.repeat(centres, per, axis=0) + rng.normal(0, spread, (len(centres) * per,
                                                                      centres.shape[1]))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


CENTRES = np.eye(4, 8, dtype=np.float32)  # four orthogonal planted groups


def test_kmeans_finds_planted_groups() -> None:
    vectors = _groups(CENTRES, 100, seed=0)
    clusters = kmeans("m@1", vectors, k=4, seed=1)
    labels = clusters.assign(vectors)
    # each planted group lands in one cluster of its own
    assert sorted({int(labels[g * 100]) for g in range(4)}) == [0, 1, 2, 3]
    assert all(len(set(labels[g * 100:(g + 1) * 100])) == 1 for g in range(4))
    assert clusters.sizes(vectors) == [100] * 4
    assert clusters.inertia < 0.05


def test_every_cluster_keeps_users_and_too_few_users_is_refused() -> None:
    vectors = _groups(CENTRES[:2], 30, seed=2)
    clusters = kmeans("m@1", vectors, k=5, seed=0)
    assert min(clusters.sizes(vectors)) > 0
    with pytest.raises(ClusterError, match="cannot make"):
        kmeans("m@1", vectors[:3], k=5)


def test_refresh_moves_centroids_toward_new_users_only() -> None:
    clusters = kmeans("m@1", _groups(CENTRES, 100, seed=3), k=4, seed=0)
    drifted = CENTRES.copy()
    drifted[0, 4] = 0.6  # group 0's users now lean toward dimension 4
    newcomers = _groups(drifted[:1], 300, seed=4)
    moved = refresh(clusters, newcomers)
    target = int(clusters.assign(newcomers[:1])[0])
    before = np.linalg.norm(clusters.centroids[target] - newcomers.mean(0))
    after = np.linalg.norm(moved.centroids[target] - newcomers.mean(0))
    assert after < 0.5 * before
    untouched = [c for c in range(4) if c != target]
    assert np.array_equal(moved.centroids[untouched], clusters.centroids[untouched])
    assert moved.generation == 2 and moved.moved["clusters_moved"] == 1
    assert moved.moved["max"] == pytest.approx(float(np.linalg.norm(
        moved.centroids[target] - clusters.centroids[target])), rel=1e-5)
    assert moved.counts[target] == clusters.counts[target] + 300


def test_a_stored_cluster_set_round_trips_and_refuses_corruption() -> None:
    clusters = kmeans("m@1", _groups(CENTRES, 20, seed=5), k=4, seed=0)
    document = clusters.to_document()
    again = ClusterSet.from_document(document)
    assert np.array_equal(again.centroids, clusters.centroids)
    assert again.sha256 == clusters.sha256 and again.k == 4
    broken = dict(document, centroids=b"\x00" * len(document["centroids"]))
    with pytest.raises(ClusterError, match="corrupt"):
        ClusterSet.from_document(broken)


def test_default_k_grows_with_users_and_keeps_clusters_populated() -> None:
    assert default_k(1) == 1
    assert default_k(400) == 8
    assert default_k(2000) == 32
    assert default_k(100_000) == 224
    assert default_k(10**8) == 256
