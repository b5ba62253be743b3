"""Fusion arithmetic on hand-made rankings: RRF scores, quotas, dedup, provenance (seen
items are filtered out before fusion, in the Recaller)."""

from __future__ import annotations

import pytest

from recall.fusion import Source, quota, rrf

RANKED = {
    "knn": [("a", 0.9), ("b", 0.8), ("a", 0.7), ("c", 0.6)],  # "a" twice: counted once
    "hot": [("c", 50.0), ("d", 40.0)],
}


def test_rrf_sums_weighted_reciprocal_ranks_with_provenance() -> None:
    fused = rrf(RANKED, {"knn": 1.0, "hot": 0.5}, k=10, rrf_k=60)
    by_id = {candidate.item_id: candidate for candidate in fused}
    assert set(by_id) == {"a", "b", "c", "d"}
    assert by_id["c"].score == pytest.approx(1 / 63 + 0.5 / 61)
    assert by_id["c"].sources == [Source("knn", 3, 0.6), Source("hot", 1, 50.0)]
    assert by_id["a"].sources == [Source("knn", 1, 0.9)]
    assert [c.item_id for c in fused] == ["c", "a", "b", "d"]


def test_rrf_ties_go_to_the_item_found_first() -> None:
    ranked = {"knn": [("z", 0.9), ("y", 0.8)], "hot": [("b", 9.0), ("a", 8.0)]}
    fused = rrf(ranked, {"knn": 1.0, "hot": 1.0}, k=10, rrf_k=60)
    assert [c.item_id for c in fused] == ["z", "b", "y", "a"]  # channel order, then rank


def test_rrf_cuts_at_k() -> None:
    assert len(rrf(RANKED, {"knn": 1.0, "hot": 1.0}, k=2, rrf_k=60)) == 2


def test_quota_gives_slots_by_weight_then_fills_from_the_others() -> None:
    ranked = {"knn": [(f"k{i}", 1.0) for i in range(10)],
              "fresh": [("f0", 1.0), ("f1", 1.0)]}
    fused = quota(ranked, {"knn": 1.0, "fresh": 1.0}, k=8)
    ids = [candidate.item_id for candidate in fused]
    assert ids[:4] == ["k0", "k1", "k2", "k3"] and ids[4:6] == ["f0", "f1"]
    assert ids[6:] == ["k4", "k5"]  # fresh could not fill its 4 slots
    assert [candidate.score for candidate in fused] == sorted(
        (candidate.score for candidate in fused), reverse=True)


def test_quota_deduplicates_across_channels() -> None:
    fused = quota(RANKED, {"knn": 2.0, "hot": 1.0}, k=10)
    ids = [candidate.item_id for candidate in fused]
    assert sorted(ids) == ["a", "b", "c", "d"] and len(ids) == len(set(ids))


def test_the_users_cluster_goes_on_the_cluster_channels_sources_only() -> None:
    ranked = {"knn": [("a", 0.9)], "cluster": [("a", 7.0), ("b", 5.0)]}
    for fused in (rrf(ranked, {"knn": 1.0, "cluster": 1.0}, k=10, rrf_k=60, cluster=3),
                  quota(ranked, {"knn": 1.0, "cluster": 1.0}, k=10, cluster=3)):
        by_id = {candidate.item_id: candidate for candidate in fused}
        assert by_id["a"].sources == [Source("knn", 1, 0.9), Source("cluster", 1, 7.0, 3)]
        assert by_id["b"].sources == [Source("cluster", 2, 5.0, 3)]
