"""The canary's data, low in the indexer so recall can read and add to it without the
rollout machinery (indexer.canary runs the roll): the canary document, each arm's
counts, and the store every recall instance and the events consumer write to."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pymongo import ReturnDocument

from indexer.settings import IndexConfig
from runtime.clients import MongoCollection, MongoDatabase
from runtime.errors import Refused

Arm = Literal["baseline", "candidate"]
ARMS: tuple[Arm, ...] = ("baseline", "candidate")
# seconds; the recall latency histogram's buckets, so p99 is read the same way
LATENCY_BUCKETS = (.005, .01, .02, .03, .05, .075, .1, .15, .2, .3, .5, .75, 1, 2, 5)
CURRENT = "current"  # the canary document's _id: one canary at a time
COUNTERS = ("requests", "errors", "empty", "degraded", "clicks", "overlap_sum",
            "overlap_n")


class CanaryError(Refused):
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
