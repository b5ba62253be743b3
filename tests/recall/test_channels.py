"""Channels' own ranking of Elasticsearch hits, without a server."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from recall.channels import Context, ItemToItemChannel
from recall.popularity import Popular
from recall.settings import ChannelSettings, RecallSettings

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _hit(item: str, similarity: float, days_old: float | None) -> dict[str, Any]:
    source = {} if days_old is None else {
        "created_at": (NOW - timedelta(days=days_old)).isoformat()}
    return {"_id": item, "_score": (1 + similarity) / 2, "_source": source}


def _context(popular: dict[str, float], seeds: dict[str, np.ndarray] | None = None
             ) -> Context:
    return Context(user={"x": 1}, user_vector=None, seen=[], seeds=seeds or {}, filters=[],
                   popular=Popular(list(popular.items()), None), seen_in_query=0,
                   overfetch=0, now=NOW)


def test_i2i_scores_an_item_by_its_closest_seed_times_its_popularity_and_freshness() -> None:
    recall = RecallSettings(i2i_min_similarity=0.3, fresh_half_life_days=14)
    channel = ItemToItemChannel(ChannelSettings(), recall)
    responses = [  # one response per seed; "b" is near both seeds
        {"hits": {"hits": [_hit("a", 0.9, 0), _hit("b", 0.5, 14)]}},
        {"hits": {"hits": [_hit("b", 0.8, 14), _hit("c", 0.85, None)]}}]
    ranked = dict(channel.rank(responses, _context({"b": math.e - 1})))
    assert ranked["a"] == pytest.approx(0.9 * 1.0 * (0.8 + 0.2 * 1.0))
    assert ranked["b"] == pytest.approx(0.8 * 1.1 * (0.8 + 0.2 * 0.5))  # its closer seed
    assert ranked["c"] == pytest.approx(0.85 * 1.0 * (0.8 + 0.2 * 0.5))  # no date: half
    assert list(ranked) == ["a", "b", "c"]  # best first


def test_i2i_asks_elasticsearch_for_the_neighbours_over_the_least_similarity() -> None:
    channel = ItemToItemChannel(ChannelSettings(size=10), RecallSettings(i2i_min_similarity=0.3))
    seeds = {"s1": np.ones(4, np.float32) / 2, "s2": np.zeros(4, np.float32)}
    searches = channel.searches(_context({}, seeds))
    assert [search["knn"]["similarity"] for search in searches] == [0.3, 0.3]
    assert searches[0]["knn"]["query_vector"] == [0.5] * 4 and searches[0]["size"] == 10


def test_i2i_reads_a_naive_date_as_utc_and_an_unparseable_one_as_no_date() -> None:
    channel = ItemToItemChannel(ChannelSettings(), RecallSettings(fresh_half_life_days=14))
    naive = (NOW - timedelta(days=14)).replace(tzinfo=None).isoformat()
    responses = [{"hits": {"hits": [
        {"_id": "naive", "_score": 1.0, "_source": {"created_at": naive}},
        {"_id": "garbage", "_score": 1.0, "_source": {"created_at": "not a date"}},
        {"_id": "number", "_score": 1.0, "_source": {"created_at": 12}},
        {"_id": "new", "_score": 1.0, "_source": {"created_at": NOW.isoformat()}}]}}]
    ranked = dict(channel.rank(responses, _context({})))
    assert ranked["naive"] == ranked["garbage"] == ranked["number"] == pytest.approx(0.9)
    assert ranked["new"] == pytest.approx(1.0)
    assert next(iter(ranked)) == "new"


@pytest.mark.parametrize("in_query", [0, 2, 5, 9])
def test_every_seen_item_is_either_in_the_query_or_over_fetched(in_query: int) -> None:
    """What ``filter`` leaves out of the must_not is what the Recaller drops from the hits:
    together they are every seen item, so none is served."""
    seen = [f"s{n}" for n in range(5)]
    ctx = Context(user={"x": 1}, user_vector=None, seen=seen, seeds={}, filters=[],
                  popular=Popular([], None), seen_in_query=in_query, overfetch=0, now=NOW)
    must_not = ctx.filter()["bool"].get("must_not", [{"ids": {"values": []}}])
    in_the_query = set(must_not[0]["ids"]["values"])
    assert in_the_query | ctx.over_fetched == set(seen)
    assert ctx.over_fetched == set(seen[in_query:])
