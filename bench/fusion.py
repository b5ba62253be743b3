"""Fusion studied offline, from every channel's own ranked list per user (what
``Recaller.explain`` returns): the fused HR@k for any weights, each channel's part in
the fused answer, and weights picked on validation users (bench.quality).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from recall.fusion import rrf
from recall.request import RecallResponse

Lists = Mapping[str, Sequence[Sequence[str]]]  # channel -> each user's ranked list
GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0)  # weights tried per channel
ANCHOR = "knn"  # its weight stays 1: the others are weighed against it


def fused_hr(lists: Lists, weights: Mapping[str, float], targets: Sequence[str], k: int,
             rrf_k: int) -> float:
    """HR@k of weighted RRF over the channels' lists, as the Recaller fuses them (a
    channel of weight 0 is left out)."""
    used = {name: weight for name, weight in weights.items() if weight > 0}
    hits = 0
    for row, target in enumerate(targets):
        ranked = {name: [(item, 0.0) for item in lists[name][row]] for name in used}
        hits += any(candidate.item_id == target for candidate in rrf(ranked, used, k, rrf_k))
    return round(hits / len(targets), 4) if targets else 0.0


def tune(lists: Lists, targets: Sequence[str], start: Mapping[str, float], k: int,
         rrf_k: int, rounds: int = 2) -> tuple[dict[str, float], float]:
    """Coordinate ascent over GRID, channel by channel against the kNN anchor; a change
    is kept only if it raises HR@k (ties keep what was there)."""
    best = {name: (1.0 if name == ANCHOR else weight) for name, weight in start.items()}
    score = fused_hr(lists, best, targets, k, rrf_k)
    for _ in range(rounds):
        for name in [n for n in best if n != ANCHOR]:
            for value in GRID:
                trial = {**best, name: value}
                found = fused_hr(lists, trial, targets, k, rrf_k)
                if found > score:
                    best, score = trial, found
    return best, score


def contributions(lists: Lists, targets: Sequence[str], answers: Sequence[RecallResponse],
                  weights: Mapping[str, float], k: int, rrf_k: int) -> dict[str, Any]:
    """What each channel adds to the served fused answers: the hits it found, the hits
    no other channel found, and the fused HR@k without it (recomputed offline;
    ``offline_fused`` checks the recomputation against the served answers)."""
    found: dict[str, int] = dict.fromkeys(weights, 0)
    alone: dict[str, int] = dict.fromkeys(weights, 0)
    for answer, target in zip(answers, targets, strict=True):
        channels = {source.channel for candidate in answer.candidates
                    if candidate.item_id == target for source in candidate.sources}
        for name in channels:
            found[name] += 1
            alone[name] += len(channels) == 1
    return {
        "weights": dict(weights), "offline_fused": fused_hr(lists, weights, targets, k, rrf_k),
        "hits": sum(any(c.item_id == t for c in a.candidates) for a, t in zip(
            answers, targets, strict=True)),
        "hits_by_channel": found, "hits_only_this_channel": alone,
        "fused_without": {name: fused_hr(lists, {n: w for n, w in weights.items()
                                                if n != name}, targets, k, rrf_k)
                          for name in weights}}
