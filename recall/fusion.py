"""Fusion: the channels' ranked lists -> one deduplicated list, each candidate with its
provenance (channel, rank, score) for the ranking stage.

    rrf    score = sum over channels of weight / (rrf_k + rank)   (Cormack et al. 2009)
    quota  each channel gets slots in proportion to its weight, filled in rank order;
           slots a channel cannot fill go to the others
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~3x, ~300 are built a request
class Source:
    """Where a candidate came from: a channel, its rank there and the channel's score."""

    channel: str
    rank: int  # 1-based, within the channel
    score: float  # the channel's own score
    cluster: int | None = None  # the ``cluster`` channel: which user cluster's items


@dataclass(slots=True)
class Candidate:
    """A recalled item, its fused score, and every channel that found it (provenance)."""

    item_id: str
    score: float
    sources: list[Source] = field(default_factory=list)


Ranked = Mapping[str, Sequence[tuple[str, float]]]  # channel -> [(item id, score)] best first


Found = dict[str, list[tuple[str, int, float]]]  # item -> [(channel, rank, score)]


def _provenance(ranked: Ranked, weights: Mapping[str, float], rrf_k: int
                ) -> tuple[Found, dict[str, float]]:
    """Every item with where each channel ranked it (an item a channel lists twice: its
    first place counts), and its weighted RRF score, in one pass; plain tuples: Source
    objects are built for the answer only."""
    found: Found = {}
    scores: dict[str, float] = {}
    for channel, pairs in ranked.items():
        weight = weights[channel]
        rank = 0
        for item_id, score in pairs:
            sources = found.get(item_id)
            if sources is None:
                rank += 1
                found[item_id] = [(channel, rank, score)]
                scores[item_id] = weight / (rrf_k + rank)
            elif sources[-1][0] != channel:  # else listed twice by this channel
                rank += 1
                sources.append((channel, rank, score))
                scores[item_id] += weight / (rrf_k + rank)
    return found, scores


def _candidates(chosen: list[tuple[str, float]], found: Found,
                cluster: int | None) -> list[Candidate]:
    """The answer's objects, for the chosen (item, fused score) only; ``cluster`` goes on
    the sources from the ``cluster`` channel."""
    return [Candidate(item_id, score, [
        Source(channel, rank, channel_score, cluster if channel == "cluster" else None)
        for channel, rank, channel_score in found[item_id]]) for item_id, score in chosen]


def rrf(ranked: Ranked, weights: Mapping[str, float], k: int, rrf_k: int,
        cluster: int | None = None) -> list[Candidate]:
    """The ``k`` best by weighted RRF; a tie goes to the item found first (channel order,
    then rank): a stable sort on the score alone, ~4x faster than on (score, id)."""
    found, scores = _provenance(ranked, weights, rrf_k)
    best = sorted(scores, key=scores.__getitem__, reverse=True)[:k]
    return _candidates([(item_id, scores[item_id]) for item_id in best], found, cluster)


def quota(ranked: Ranked, weights: Mapping[str, float], k: int,
          cluster: int | None = None) -> list[Candidate]:
    found, _ = _provenance(ranked, weights, 1)
    total = sum(weights[channel] for channel in ranked) or 1.0
    queues = {channel: [item for item, _ in pairs if item in found]
              for channel, pairs in ranked.items()}
    slots = {channel: math.ceil(k * weights[channel] / total) for channel in ranked}
    chosen: dict[str, None] = {}
    order = sorted(ranked, key=lambda channel: -weights[channel])
    for budgeted in (True, False):  # first within each quota, then whatever is left
        for channel in order:
            taken = 0
            for item_id in queues[channel]:
                if len(chosen) >= k or (budgeted and taken >= slots[channel]):
                    break
                if item_id not in chosen:
                    chosen[item_id] = None
                    taken += 1
    # a score that keeps the quota order
    return _candidates([(item_id, float(len(chosen) - position))
                        for position, item_id in enumerate(chosen)], found, cluster)
