"""Recall channels: each one a small class that builds Elasticsearch searches for a user.

A channel turns the request context into zero or more search bodies (all of them go into
one ``_msearch``) and turns their responses into ranked (item id, score) pairs. Every
search is filtered to live items, the request's filters and the newest seen items, asks
for as many more as the older seen items it cannot exclude in the query (the Recaller
filters those out of every channel's results), and carries the channel's own time
budget. Add a channel by subclassing ``Channel`` and
listing it in ``CHANNELS``; settings pick which run and with what weight.
"""

from __future__ import annotations

import functools
import math
import operator
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import repeat
from typing import Any, ClassVar

import numpy as np

from indexer.layout import LIVE, knn_clause
from recall.popularity import Popular
from recall.settings import ChannelSettings, RecallSettings
from towers.dataset import RECENT_ITEMS, TAG_COUNTS

TOP_TAGS = 5
_SCORE = operator.itemgetter("_score")
_ID = operator.itemgetter("_id")


@dataclass
class Context:
    """What the channels know about this request."""

    user: dict[str, Any]  # profile + behaviour ({} for a cold start)
    user_vector: np.ndarray | None  # None: cold start, no kNN
    seen: list[str]  # every item the user has seen, newest first: excluded everywhere
    seeds: dict[str, np.ndarray]  # i2i: the user's newest items' stored vectors
    filters: list[dict[str, Any]]  # Elasticsearch filter clauses from the request
    popular: Popular  # measured popularity now (recall.popularity)
    seen_in_query: int  # how many of ``seen`` go into the query's must_not
    overfetch: int  # extra hits per search: the seen items left out of must_not
    index: str = ""  # the concrete index every search goes to
    cluster: int | None = None  # the user's cluster under the serving version
    cluster_popular: Popular | None = None  # that cluster's popular items
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    @functools.cached_property
    def excluded(self) -> frozenset[str]:
        """``seen`` as a set, built once per request for every channel."""
        return frozenset(self.seen)

    @functools.cached_property
    def over_fetched(self) -> frozenset[str]:
        """The seen items ``filter`` leaves out of the query's ``must_not`` (searches ask
        for as many more hits): the Recaller drops them from every channel's hits."""
        return frozenset(self.seen[self.seen_in_query:])

    def filter(self) -> dict[str, Any]:
        clauses: dict[str, Any] = {"filter": [LIVE, *self.filters]}
        if self.seen and self.seen_in_query:
            clauses["must_not"] = [{"ids": {"values": self.seen[:self.seen_in_query]}}]
        return {"bool": clauses}


class Channel(ABC):
    name: ClassVar[str]

    def __init__(self, settings: ChannelSettings, recall: RecallSettings) -> None:
        self.settings = settings
        self.recall = recall

    @abstractmethod
    def searches(self, ctx: Context) -> list[dict[str, Any]]:
        """Search bodies for this request; none when the channel has nothing to go on."""

    def rank(self, responses: list[dict[str, Any]], ctx: Context) -> list[tuple[str, float]]:
        """Ranked (item id, score), best first. Default: the order Elasticsearch returned."""
        return [(hit["_id"], float(hit["_score"] or 0.0))
                for response in responses for hit in response["hits"]["hits"]]

    def size(self, ctx: Context) -> int:
        """Hits per search: the channel's size plus the seen items not in the query."""
        return self.settings.size + ctx.overfetch

    def _body(self, ctx: Context, **parts: Any) -> dict[str, Any]:
        return {"size": self.size(ctx), "timeout": f"{self.settings.timeout_ms}ms",
                "_source": False, **parts}

    def _knn(self, ctx: Context, vector: np.ndarray,
             similarity: float | None = None) -> dict[str, Any]:
        size = self.size(ctx)
        return self._body(ctx, knn=knn_clause(vector, size, max(2 * size, 100), ctx.filter(),
                                              similarity))


class KnnChannel(Channel):
    """u2i: the user tower's vector against the item vectors of the same model version."""

    name = "knn"

    def searches(self, ctx: Context) -> list[dict[str, Any]]:
        if ctx.user_vector is None:
            return []
        return [self._knn(ctx, ctx.user_vector)]


class ItemToItemChannel(Channel):
    """i2i: neighbours of the user's newest items, cut at a similarity, re-weighted lightly
    towards measured-popular and fresh items."""

    name = "i2i"

    def searches(self, ctx: Context) -> list[dict[str, Any]]:
        """One kNN search a seed, cut at ``i2i_min_similarity`` by Elasticsearch (knn
        ``similarity``, 8.8+): the neighbours under it never travel."""
        return [{**self._knn(ctx, vector, self.recall.i2i_min_similarity),
                 "_source": ["created_at"]} for vector in ctx.seeds.values()]

    def rank(self, responses: list[dict[str, Any]], ctx: Context) -> list[tuple[str, float]]:
        """An item's score: its highest similarity to a seed times its prior (popularity,
        freshness). The prior is positive, so an item's best hit is its most similar one;
        it is computed once per item, in numpy (one request has ~150 hits), and the
        per-item lookups go through ``map`` (a Python loop over them cost ~1 us an item).
        The hits are over ``i2i_min_similarity`` already (``searches``)."""
        hits = [hit for response in responses for hit in response["hits"]["hits"]]
        if len(responses) > 1:  # seeds can share a neighbour: sorted ascending, its best
            hits.sort(key=_SCORE)  # hit is the one the dict keeps
        closest = dict(zip(map(_ID, hits), hits, strict=True))
        if not closest:
            return []
        ids = list(closest)
        best = list(closest.values())
        similarity = np.fromiter(map(_SCORE, best), float, len(best)) * 2 - 1  # (1 + dot) / 2
        created = np.fromiter(map(_created_s, best), float, len(best))  # nan: no date
        half_life_s = self.recall.fresh_half_life_days * 86400
        freshness = np.exp2(np.minimum(created - ctx.now.timestamp(), 0.0) / half_life_s)
        freshness[np.isnan(freshness)] = 0.5
        by_id = ctx.popular.by_id
        prior = 0.8 + 0.2 * freshness
        if by_id:
            popularity = np.fromiter(map(by_id.get, ids, repeat(0.0)), float, len(ids))
            prior *= 1 + 0.1 * np.log1p(np.maximum(popularity, 0.0))
        scores = similarity * prior
        order = np.argsort(-scores, kind="stable").tolist()
        ranked = scores.tolist()
        return [(ids[n], ranked[n]) for n in order]


class TagsChannel(Channel):
    """Content: items carrying the user's most frequent tags (boosted by frequency)."""

    name = "tags"

    def searches(self, ctx: Context) -> list[dict[str, Any]]:
        counts = ctx.user.get(TAG_COUNTS) or {}
        top = sorted(counts.items(), key=lambda pair: -pair[1])[:TOP_TAGS]
        if not top:
            return []
        query = ctx.filter()
        query["bool"]["should"] = [{"term": {"tags": {"value": tag, "boost": float(count)}}}
                                   for tag, count in top]
        query["bool"]["minimum_should_match"] = 1
        return [self._body(ctx, query=query)]


class _PopularChannel(Channel):
    """Items by a measured popularity, kept to those that are live, pass the request's
    filters and were not seen."""

    @abstractmethod
    def popular(self, ctx: Context) -> Popular | None:
        """Where this channel's items and their decayed counts come from."""

    def searches(self, ctx: Context) -> list[dict[str, Any]]:
        popular = self.popular(ctx)
        # twice the size: room for items the filters or tombstones drop
        ids = [item for item, _ in (popular.items if popular else [])
               if item not in ctx.excluded][:2 * self.size(ctx)]
        if not ids:
            return []
        query = ctx.filter()
        query["bool"]["filter"].append({"ids": {"values": ids}})
        return [{**self._body(ctx, query=query), "size": len(ids)}]

    def rank(self, responses: list[dict[str, Any]], ctx: Context) -> list[tuple[str, float]]:
        by_id = popular.by_id if (popular := self.popular(ctx)) else {}
        found = [(hit["_id"], by_id.get(hit["_id"], 0.0))
                 for response in responses for hit in response["hits"]["hits"]]
        return sorted(found, key=lambda pair: -pair[1])


class HotChannel(_PopularChannel):
    """Measured popularity over everyone: the items users acted on most lately
    (recall.popularity)."""

    name = "hot"

    def popular(self, ctx: Context) -> Popular | None:
        return ctx.popular


class ClusterChannel(_PopularChannel):
    """The popular items of the user's cluster (k-means on the serving version's user
    vectors; counted per cluster by the events consumer)."""

    name = "cluster"

    def popular(self, ctx: Context) -> Popular | None:
        return ctx.cluster_popular


class MoreLikeThisChannel(Channel):
    """Text: Elasticsearch ``more_like_this`` over the title and tags of the user's newest
    items (the like-documents themselves are never returned)."""

    name = "mlt"

    def searches(self, ctx: Context) -> list[dict[str, Any]]:
        newest = (ctx.user.get(RECENT_ITEMS) or [])[:self.recall.mlt_items]
        if not newest:
            return []
        query = ctx.filter()
        query["bool"]["must"] = [{"more_like_this": {
            "fields": list(self.recall.mlt_fields),
            "like": [{"_index": ctx.index, "_id": item} for item in newest],
            "min_term_freq": 1, "min_doc_freq": 1, "max_query_terms": 25,
            "minimum_should_match": "10%"}}]
        return [self._body(ctx, query=query)]


class FreshChannel(Channel):
    """The newest items."""

    name = "fresh"

    def searches(self, ctx: Context) -> list[dict[str, Any]]:
        return [self._body(ctx, query=ctx.filter(), sort=[{"created_at": {"order": "desc"}}])]

    def rank(self, responses: list[dict[str, Any]], ctx: Context) -> list[tuple[str, float]]:
        return _by_sort_value(responses)


def _by_sort_value(responses: list[dict[str, Any]]) -> list[tuple[str, float]]:
    return [(hit["_id"], float((hit.get("sort") or [0])[0] or 0))
            for response in responses for hit in response["hits"]["hits"]]


_DATES: dict[str, float] = {}  # an item's date is parsed once, not once per request
MAX_DATES = 1 << 16


def _created_s(hit: dict[str, Any]) -> float:
    """A hit's ``created_at`` as epoch seconds (naive means UTC); nan if it has none. The
    common case, a date parsed before, is one lookup: ~128 hits a request go through it."""
    try:
        return _DATES[hit["_source"]["created_at"]]
    except (KeyError, TypeError):  # not parsed yet, no date, or not a string
        return _parse_created(hit)


def _parse_created(hit: dict[str, Any]) -> float:
    value = (hit.get("_source") or {}).get("created_at")
    if not isinstance(value, str):
        return math.nan
    try:
        created = datetime.fromisoformat(value)
    except ValueError:
        seconds = math.nan
    else:
        seconds = (created if created.tzinfo else created.replace(tzinfo=UTC)).timestamp()
    if len(_DATES) >= MAX_DATES:
        _DATES.clear()
    _DATES[value] = seconds
    return seconds


CHANNELS: dict[str, type[Channel]] = {
    channel.name: channel
    for channel in (KnnChannel, ItemToItemChannel, TagsChannel, HotChannel, FreshChannel,
                    ClusterChannel, MoreLikeThisChannel)}
