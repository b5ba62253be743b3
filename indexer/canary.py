"""Canary rollouts: a candidate version serves a stable share of users beside the serving
version; the two are compared on what recall sees, and the candidate is promoted or rolled
back by itself.

    start    (after the gates) the candidate's state `canary`; one canary document names
             candidate, baseline (the serving version), share, duration and thresholds
    recall   each request: hash(canary id, user) < share -> the candidate's own index and
             user tower, else the serving alias's: one version per request, never both.
             Per arm: requests, errors, empty or degraded answers, latency buckets, and
             for a sample of candidate requests the overlap with the baseline's answer
    events   a user event that names the version that answered (``model``) counts as a
             click of that arm
    decide   every ``canary_poll_s``: an arm that errs, comes back empty or slow beyond
             the thresholds rolls back at once; at the end of the duration the
             click-through decides too. Promote (the alias switch) or roll back, with the
             figures in the registry history and in the canary document
    abort    `esrec models canary abort`: the candidate goes back to ready at once

A canary whose controller died stops splitting traffic at ``expires_at``; recall never
keeps sending users to a candidate nobody decides on.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pymongo import ReturnDocument

from indexer.gates import GateResult
from indexer.lifecycle import VersionError, Versions
from indexer.settings import IndexConfig, RolloutSettings
from runtime.clients import MongoCollection, MongoDatabase

Arm = Literal["baseline", "candidate"]
ARMS: tuple[Arm, ...] = ("baseline", "candidate")
# seconds; the recall latency histogram's buckets, so p99 is read the same way
LATENCY_BUCKETS = (.005, .01, .02, .03, .05, .075, .1, .15, .2, .3, .5, .75, 1, 2, 5)
CURRENT = "current"  # the canary document's _id: one canary at a time
COUNTERS = ("requests", "errors", "empty", "degraded", "clicks", "overlap_sum",
            "overlap_n")


class CanaryError(VersionError):
    """A canary that cannot start or be changed now, with what to do."""


@dataclass(frozen=True)
class Canary:
    id: str
    candidate: str
    baseline: str
    candidate_index: str
    share: float
    state: str  # running | promoted | rolled_back | aborted
    started_at: datetime
    ends_at: datetime
    expires_at: datetime  # recall stops splitting here if no decision came
    figures: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    def running(self, now: datetime | None = None) -> bool:
        return self.state == "running" and (now or datetime.now(UTC)) < self.expires_at

    def arm(self, user_id: str) -> Arm:
        """The user's arm: stable within this canary, independent between canaries."""
        digest = hashlib.sha1(f"{self.id}\x00{user_id}".encode(), usedforsecurity=False)
        return "candidate" if int(digest.hexdigest()[:8], 16) < self.share * 2 ** 32 \
            else "baseline"

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Canary:
        return cls(**{key: _aware(value) for key, value in document.items()
                      if key in cls.__dataclass_fields__})


def _aware(value: Any) -> Any:
    return value.replace(tzinfo=UTC) if isinstance(value, datetime) and not value.tzinfo \
        else value


@dataclass
class ArmCounts:
    """What recall and the events saw of one arm (summed over every recall instance)."""

    requests: int = 0
    errors: int = 0
    empty: int = 0  # no candidate at all
    degraded: int = 0  # a channel missing or partial
    clicks: int = 0  # user events naming this arm's version
    overlap_sum: float = 0.0  # candidate arm: overlap@k with the baseline's answer
    overlap_n: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))

    def rate(self, counter: str) -> float:
        return getattr(self, counter) / self.requests if self.requests else 0.0

    def p99_s(self) -> float:
        """The 99th percentile's bucket bound (inf past the last bucket)."""
        total = sum(self.latency)
        if not total:
            return 0.0
        seen = 0
        for bound, count in zip((*LATENCY_BUCKETS, math.inf), self.latency, strict=True):
            seen += count
            if seen >= 0.99 * total:
                return bound
        return math.inf

    def figures(self) -> dict[str, float]:
        return {"requests": self.requests, "error_rate": round(self.rate("errors"), 4),
                "empty_rate": round(self.rate("empty"), 4),
                "degraded_rate": round(self.rate("degraded"), 4),
                "p99_ms": self.p99_s() * 1000, "clicks": self.clicks,
                "ctr": round(self.rate("clicks"), 4),
                **({"overlap": round(self.overlap_sum / self.overlap_n, 4)}
                   if self.overlap_n else {})}


class CanaryStore:
    """The canary document and the observations every recall instance and the events
    consumer add to (one document per canary and arm, ``$inc`` only)."""

    def __init__(self, db: MongoDatabase, settings: IndexConfig) -> None:
        names = settings.mongo.collections
        self.canaries: MongoCollection = db[names.canary]
        self.observations: MongoCollection = db[names.canary_observations]

    def current(self) -> Canary | None:
        document = self.canaries.find_one({"_id": CURRENT})
        return None if document is None else Canary.from_document(document)

    def begin(self, canary: Canary) -> None:
        """Store a new canary unless one is running."""
        document = {"_id": CURRENT, **asdict(canary)}
        existing = self.current()
        if existing is not None and existing.running():
            raise CanaryError(f"a canary of {existing.candidate} is running",
                              "wait for its decision or `esrec models canary abort`")
        self.canaries.replace_one({"_id": CURRENT}, document, upsert=True)

    def finish(self, canary_id: str, state: str, reason: str,
               figures: Mapping[str, Any]) -> bool:
        """End the canary if it still runs; False if it had ended (aborted meanwhile)."""
        return self.canaries.find_one_and_update(
            {"_id": CURRENT, "id": canary_id, "state": "running"},
            {"$set": {"state": state, "reason": reason, "figures": dict(figures)}},
            return_document=ReturnDocument.AFTER) is not None

    def note(self, canary_id: str, figures: Mapping[str, Any]) -> None:
        """The latest figures, for status and /metrics while it runs."""
        self.canaries.update_one({"_id": CURRENT, "id": canary_id},
                                 {"$set": {"figures": dict(figures)}})

    def add(self, canary_id: str, arm: Arm, counts: ArmCounts) -> None:
        increments: dict[str, Any] = {name: getattr(counts, name) for name in COUNTERS
                                      if getattr(counts, name)}
        increments.update({f"latency.{i}": n for i, n in enumerate(counts.latency) if n})
        if increments:
            self.observations.update_one({"_id": f"{canary_id}|{arm}"},
                                         {"$inc": increments}, upsert=True)

    def counts(self, canary_id: str) -> dict[Arm, ArmCounts]:
        found: dict[Arm, ArmCounts] = {arm: ArmCounts() for arm in ARMS}
        for document in self.observations.find({"_id": {"$in": [f"{canary_id}|{arm}"
                                                                for arm in ARMS]}}):
            counts = found[document["_id"].rsplit("|", 1)[1]]
            for name in COUNTERS:
                setattr(counts, name, document.get(name, 0))
            for index, count in (document.get("latency") or {}).items():
                counts.latency[int(index)] = count
        return found


def checks(counts: Mapping[Arm, ArmCounts], settings: RolloutSettings,
           final: bool) -> list[GateResult]:
    """The online comparison; click-through only at the end (clicks trail requests)."""
    base, cand = counts["baseline"], counts["candidate"]
    results = [
        GateResult("errors", cand.rate("errors") <= base.rate("errors")
                   + settings.canary_max_error_increase,
                   f"error rate {cand.rate('errors'):.4f} vs {base.rate('errors'):.4f} "
                   f"(+{settings.canary_max_error_increase:g} allowed)"),
        GateResult("empty", cand.rate("empty") + cand.rate("degraded") <= base.rate("empty")
                   + base.rate("degraded") + settings.canary_max_empty_increase,
                   f"empty or degraded {cand.rate('empty') + cand.rate('degraded'):.4f} vs "
                   f"{base.rate('empty') + base.rate('degraded'):.4f} "
                   f"(+{settings.canary_max_empty_increase:g} allowed)"),
        GateResult("latency", cand.p99_s() <= base.p99_s() * settings.canary_max_p99_ratio
                   + settings.canary_p99_slack_ms / 1000,
                   f"p99 {cand.p99_s() * 1000:g} ms vs {base.p99_s() * 1000:g} ms "
                   f"(x{settings.canary_max_p99_ratio:g} + "
                   f"{settings.canary_p99_slack_ms:g} ms allowed)")]
    if cand.overlap_n and settings.canary_min_overlap > 0:
        overlap = cand.overlap_sum / cand.overlap_n
        results.append(GateResult("overlap", overlap >= settings.canary_min_overlap,
                                  f"overlap with the baseline's answers {overlap:.3f} "
                                  f"(min {settings.canary_min_overlap:g})"))
    if final:
        results.append(GateResult(
            "ctr", cand.rate("clicks") >= settings.canary_min_ctr_ratio * base.rate("clicks"),
            f"clicks per request {cand.rate('clicks'):.3f} vs {base.rate('clicks'):.3f} "
            f"(min x{settings.canary_min_ctr_ratio:g})"))
    return results


Verdict = Literal["promote", "rollback"]
OnFigures = Callable[[dict[str, Any], list[GateResult]], None]


def verdict(canary: Canary, counts: Mapping[Arm, ArmCounts], settings: RolloutSettings,
            now: datetime) -> tuple[Verdict | None, list[GateResult]]:
    """None while undecided; rollback as soon as an instant check fails on enough
    requests; at the end: promote if every check passes on enough requests. An arm short
    of requests at the end extends the canary by up to half its expiry grace (quiet
    hours), then rolls it back: never a promote on too little traffic."""
    enough = all(counts[arm].requests >= settings.canary_min_requests for arm in ARMS)
    final = now >= canary.ends_at
    results = checks(counts, settings, final)
    if enough and not all(result.passed for result in results):
        return "rollback", results
    if not final:
        return None, results
    if enough:
        return "promote", results
    if now < canary.ends_at + (canary.expires_at - canary.ends_at) / 2:
        return None, results
    results.append(GateResult("traffic", False, "fewer than "
                              f"{settings.canary_min_requests} requests per arm"))
    return "rollback", results


def run_canary(versions: Versions, store: CanaryStore, ref: str, share: float,
               duration_s: float, on_figures: OnFigures | None = None) -> Verdict | str:
    """Canary ``ref`` against the serving version until a verdict (or an abort); returns
    "promote", "rollback" or "aborted". The candidate must be ready and gated."""
    settings = versions.services.settings.rollout
    registry = versions.registry
    baseline = versions.serving()
    if baseline is None or baseline == ref:
        raise CanaryError(f"a canary needs another version serving ({baseline or 'none'})",
                          f"promote {ref} directly (`esrec models promote {ref}`)")
    index = versions.services.index_of(ref)
    if index is None or registry.get(ref).state not in ("ready", "canary"):
        raise CanaryError(f"{ref} is not ready", f"run `esrec models build {ref}` first")
    now = datetime.now(UTC)
    canary = Canary(uuid.uuid4().hex[:12], ref, baseline, index, share, "running", now,
                    now + timedelta(seconds=duration_s),
                    now + timedelta(seconds=duration_s + settings.canary_expire_grace_s))
    store.begin(canary)
    versions.set_state(ref, "canary", f"canary: {share:.0%} of users beside {baseline} "
                                      f"for {duration_s:g} s")
    try:
        return _watch(versions, store, canary, on_figures)
    except BaseException:  # Ctrl-C or a server gone for good: no canary left running
        store.finish(canary.id, "aborted", "the controller stopped", {})
        _back_to_ready(versions, ref, "canary stopped with its controller")
        raise


def _watch(versions: Versions, store: CanaryStore, canary: Canary,
           on_figures: OnFigures | None) -> Verdict | str:
    settings = versions.services.settings.rollout
    stop = versions.services.stop
    while not stop.wait(settings.canary_poll_s):
        current = store.current()
        if current is None or current.id != canary.id or current.state != "running":
            _back_to_ready(versions, canary.candidate, "canary aborted")
            return "aborted"
        counts = store.counts(canary.id)
        figures: dict[str, Any] = {arm: counts[arm].figures() for arm in ARMS}
        decided, results = verdict(canary, counts, settings, datetime.now(UTC))
        if on_figures is not None:
            on_figures(figures, results)
        store.note(canary.id, figures)
        if decided is not None:
            return _decide(versions, store, canary, decided, figures, results)
    store.finish(canary.id, "aborted", "the controller was stopped", {})
    _back_to_ready(versions, canary.candidate, "canary stopped with its controller")
    return "aborted"


def _back_to_ready(versions: Versions, ref: str, reason: str) -> None:
    if versions.registry.get(ref).state == "canary":
        versions.set_state(ref, "ready", reason)


def _decide(versions: Versions, store: CanaryStore, canary: Canary, decided: Verdict,
            figures: dict[str, Any], results: list[GateResult]) -> Verdict | str:
    failed = [f"{r.name}: {r.detail}" for r in results if not r.passed]
    summary = "; ".join(f"{arm} {figures[arm]}" for arm in ARMS)
    state = "promoted" if decided == "promote" else "rolled_back"
    reason = (f"canary passed: {summary}" if decided == "promote" else
              f"canary rolled back: {'; '.join(failed)} ({summary})")
    if not store.finish(canary.id, state, reason, figures):
        _back_to_ready(versions, canary.candidate, "canary aborted")
        return "aborted"
    if decided == "promote":
        versions.promote(canary.candidate, reason=reason)
    else:
        versions.set_state(canary.candidate, "ready", reason)
    return decided


def abort(versions: Versions, store: CanaryStore) -> Canary:
    """Stop the running canary now: recall stops splitting within its alias ttl, and the
    candidate goes back to ready (also when its controller is gone)."""
    current = store.current()
    if current is None or current.state != "running":
        raise CanaryError("no canary is running")
    store.finish(current.id, "aborted", "aborted from the command line", current.figures)
    _back_to_ready(versions, current.candidate, "canary aborted from the command line")
    return current
