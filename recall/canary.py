"""Recall's side of a canary roll (indexer.canary): what each arm saw, and the clicks.

    CanaryObserver  per request: the arm's requests, errors, empty and degraded answers,
                    latency bucket; per sampled candidate request, the overlap with the
                    baseline's answer; added to MongoDB every FLUSH_S by a background
                    thread (``$inc``: every recall instance adds to the same documents)
    ClickCounter    in `esrec recall events`: an engagement event that names the version
                    that answered (``UserEvent.model``), made since the canary began, is a
                    click of that version's arm
    CanaryCollector /metrics: the running canary's share, its versions and state, and
                    the figures its controller last computed
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pymongo.errors import PyMongoError

from indexer.canary_store import LATENCY_BUCKETS, Arm, ArmCounts, Canary, CanaryStore
from recall.refresh import Refreshed
from recall.state import UserEvent

log = logging.getLogger("esrec.recall.canary")
FLUSH_S = 2.0
ENGAGED = frozenset({"click", "like", "add_to_cart", "purchase", "share"})  # not "view"


class CanaryObserver:
    def __init__(self, store: CanaryStore, flush_s: float = FLUSH_S) -> None:
        self.store = store
        self.flush_s = flush_s
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, Arm], ArmCounts] = {}
        self._thread: threading.Thread | None = None

    def record(self, canary: Canary, arm: Arm, seconds: float, error: bool = False,
               empty: bool = False, degraded: bool = False) -> None:
        with self._lock:
            counts = self._counts(canary.id, arm)
            counts.requests += 1
            counts.errors += error
            counts.empty += empty
            counts.degraded += degraded
            counts.latency[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._start()

    def overlap(self, canary: Canary, value: float) -> None:
        with self._lock:
            counts = self._counts(canary.id, "candidate")
            counts.overlap_sum += value
            counts.overlap_n += 1

    def _counts(self, canary_id: str, arm: Arm) -> ArmCounts:
        return self._pending.setdefault((canary_id, arm), ArmCounts())

    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, daemon=True,
                                                    name="esrec-canary-observer")
                    self._thread.start()

    def _loop(self) -> None:
        while True:
            threading.Event().wait(self.flush_s)
            self.flush()

    def flush(self) -> None:
        """Add what was seen since the last flush; kept for the next one on failure."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for (canary_id, arm), counts in pending.items():
            try:
                self.store.add(canary_id, arm, counts)
            except PyMongoError as error:
                log.warning("canary observations not saved; retried", extra={
                    "error": repr(error)})
                with self._lock:
                    self._merge(self._counts(canary_id, arm), counts)

    @staticmethod
    def _merge(into: ArmCounts, counts: ArmCounts) -> None:
        for name in ("requests", "errors", "empty", "degraded", "clicks", "overlap_sum",
                     "overlap_n"):
            setattr(into, name, getattr(into, name) + getattr(counts, name))
        into.latency = [a + b for a, b in zip(into.latency, counts.latency, strict=True)]


class ClickCounter:
    """Clicks of the running canary's two versions, from the user events. A click made
    before the canary began is not counted: the events stage trails recall, and the
    baseline's clicks still queued from before the split would otherwise raise its
    click-through above a candidate that has none queued."""

    def __init__(self, store: CanaryStore, ttl_s: float = FLUSH_S) -> None:
        self.store = store
        self._canary = Refreshed(lambda _: [store.current()], ttl_s, "the canary")

    def count(self, events: Sequence[UserEvent]) -> int:
        """Add the engagements naming a version of the running canary; returns them."""
        attributed = [event for event in events if event.model and event.type in ENGAGED]
        if not attributed:
            return 0
        canary = self._canary.current()[0]
        if canary is None or not canary.running():
            return 0
        arms: dict[str, Arm] = {canary.candidate: "candidate", canary.baseline: "baseline"}
        clicks: dict[Arm, int] = {}
        for event in attributed:
            arm = arms.get(event.model or "")
            if arm is not None and event.ts >= canary.started_at:
                clicks[arm] = clicks.get(arm, 0) + 1
        for arm, count in clicks.items():
            self.store.add(canary.id, arm, ArmCounts(clicks=count))
        return sum(clicks.values())


class CanaryCollector(Collector):
    """The canary recall routes by, as gauges, read at scrape time."""

    def __init__(self, canary: Callable[[], Canary | None]) -> None:
        self.canary = canary

    def collect(self) -> Iterator[GaugeMetricFamily]:
        canary = self.canary()
        running = canary is not None and canary.running()
        share = GaugeMetricFamily("esrec_canary_share",
                                  "Share of users the candidate version answers (0: none)")
        share.add_metric([], canary.share if running and canary else 0.0)
        yield share
        info = GaugeMetricFamily("esrec_canary_info", "The latest canary roll: 1 for its "
                                 "candidate, baseline and state", labels=["candidate",
                                                                          "baseline", "state"])
        figures = GaugeMetricFamily("esrec_canary_figure", "The latest canary's figures "
                                    "per arm, as its controller last computed them",
                                    labels=["arm", "figure"])
        if canary is not None:
            state = "expired" if canary.state == "running" and not running else canary.state
            info.add_metric([canary.candidate, canary.baseline, state], 1.0)
            for arm, values in canary.figures.items():
                for name, value in (values or {}).items():
                    figures.add_metric([arm, name], float(value))
        yield info
        yield figures
