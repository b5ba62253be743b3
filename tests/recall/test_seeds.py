"""The i2i seed vectors kept between requests, without a server (recall.seeds)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from indexer.layout import VECTOR
from recall.seeds import SeedVectors


def _doc(item: str, vector: list[float] | None) -> dict[str, Any]:
    """An mget doc: found with a vector, a tombstone (found, no vector) or not found."""
    if vector is None:
        return {"_id": item, "found": True, "_source": {}}
    return {"_id": item, "found": True, "_source": {VECTOR: vector}}


def test_looked_up_seeds_are_kept_per_index_and_a_tombstone_as_no_seed() -> None:
    seeds = SeedVectors(max_items=10, ttl_s=60)
    assert seeds.kept("idx-g1", ["a", "b"]) == ({}, ["a", "b"])
    vectors = seeds.keep("idx-g1", ["a", "b", "gone"], [
        _doc("a", [1.0, 0.0]), _doc("b", None), {"_id": "gone", "found": False}])
    assert vectors["b"] is None and vectors["gone"] is None
    np.testing.assert_array_equal(vectors["a"], np.asarray([1.0, 0.0], np.float32))
    found, missing = seeds.kept("idx-g1", ["a", "b", "gone", "c"])
    assert missing == ["c"] and found["b"] is None and found["gone"] is None
    assert found["a"] is not None and found["a"].dtype == np.float32
    # another version's index never gets these vectors
    assert seeds.kept("idx-g2", ["a"]) == ({}, ["a"])


def test_seeds_are_looked_up_again_after_the_ttl() -> None:
    seeds = SeedVectors(max_items=10, ttl_s=0.05)
    seeds.keep("idx", ["a"], [_doc("a", [1.0])])
    assert seeds.kept("idx", ["a"])[1] == []
    time.sleep(0.06)
    assert seeds.kept("idx", ["a"])[1] == ["a"]


def test_the_oldest_kept_seeds_go_first_and_a_ttl_of_0_keeps_none() -> None:
    seeds = SeedVectors(max_items=2, ttl_s=60)
    for item in ("a", "b", "c"):
        seeds.keep("idx", [item], [_doc(item, [1.0])])
    assert seeds.kept("idx", ["a", "b", "c"])[1] == ["a"]
    seeds.keep("idx", ["b"], [_doc("b", [2.0])])  # looked up again: the newest now
    seeds.keep("idx", ["d"], [_doc("d", [1.0])])
    assert seeds.kept("idx", ["b", "c", "d"])[1] == ["c"]
    off = SeedVectors(max_items=10, ttl_s=0)
    assert list(off.keep("idx", ["a"], [_doc("a", [1.0])])) == ["a"]
    assert off.kept("idx", ["a"])[1] == ["a"]
