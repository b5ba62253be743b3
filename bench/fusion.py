"""Fusion studied offline, from every channel's own ranked list per user (what
``Recaller.explain`` returns): the fused HR@k for any weights, each channel's part in
the fused answer, and weights calibrated on validation users (bench.quality).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from recall.fusion import rrf
from recall.request import RecallResponse

Lists = Mapping[str, Sequence[Sequence[str]]]  # channel -> each user's ranked list
STEP = 0.05  # calibrated weights are multiples of this
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


def calibrate(lists: Lists, targets: Sequence[str], k: int, step: float = STEP
              ) -> tuple[dict[str, float], dict[str, float]]:
    """Weights from each channel's own HR@k relative to the anchor's, rounded to ``step``
    and at least ``step`` (each channel keeps a voice): a rule that a few hundred users
    estimate stably, where searching the fused HR over weights chases noise."""
    own = {name: fused_hr(lists, {name: 1.0}, targets, k, 60) for name in lists}
    anchor = own.get(ANCHOR) or 1.0
    weights = {name: 1.0 if name == ANCHOR else max(step, round(hr / anchor / step) * step)
               for name, hr in own.items()}
    return {name: round(weight, 2) for name, weight in weights.items()}, own


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
