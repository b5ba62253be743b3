"""A roll: build -> validate -> [canary] -> promote -> probe, with automatic rollbacks.

    build     unless the version is ready or serving already
    catch up  while the index replays the changes made during its backfill: until its lag
              is within max_lag_s (catch_up_timeout_s at most; max_lag_s without moving:
              nothing follows it, and the freshness gate says so)
    validate  every gate (gates.validate); one failure refuses the promote: the version
              that served keeps serving
    canary    optional: a share of users on live traffic against the serving version
              (indexer.canary); a failed comparison rolls back before anyone else sees it
    promote   one atomic alias switch (the canary's own, when it passed)
    probe     user-tower kNN on the serving alias; a failure promotes the previous version
              again (automatic rollback, with the probe's detail in the registry history)
    watch     recall's figures for the new version for rollout.watch_s (indexer.watch);
              a broken rule promotes the previous version again and says why
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from bson.timestamp import Timestamp

from indexer.backfill import OnProgress
from indexer.canary import OnFigures, run_canary
from indexer.canary_store import CanaryStore
from indexer.checkpoint import Progress
from indexer.gates import GateResult, lag_of, probe_serving, validate
from indexer.lifecycle import VersionError, Versions
from indexer.settings import RolloutSettings
from indexer.source import server_time
from indexer.watch import watch

log = logging.getLogger("esrec.versions")
CATCH_UP_POLL_S = 1.0
CATCH_UP_LOG_EVERY_S = 10.0

# what a caller sees of a roll: a step starts (context manager around it), gates are known
Step = Callable[[str], AbstractContextManager[None]]
OnGates = Callable[[list[GateResult]], None]


class GateFailed(VersionError):
    """A gate refused the promote, or the probe after it failed (rolled back)."""


def _no_step(_what: str) -> AbstractContextManager[None]:
    return nullcontext()


@dataclass(frozen=True)
class CanaryPlan:
    share: float  # of users the candidate answers
    duration_s: float


def roll(versions: Versions, ref: str, step: Step = _no_step,
         on_gates: OnGates = lambda _results: None,
         on_progress: OnProgress | None = None, canary: CanaryPlan | None = None,
         on_figures: OnFigures | None = None, watch_s: float | None = None) -> str | None:
    """Roll ``ref`` out; returns the version that served before. Raises GateFailed when
    a gate refuses the promote, or the canary, the probe or the watch rolled it back.
    ``watch_s``: how long to watch after the promote (None: rollout.watch_s; 0: not)."""
    services = versions.services
    if services.registry.get(ref).state not in ("ready", "serving"):
        with step(f"build {ref}"):
            report = versions.build(ref, on_progress)
        if not report.done:
            raise VersionError(f"stopped before {ref}'s backfill finished",
                               "run the build again to resume it")
    target = services.target(ref)
    lag = lag_of(services, target.index)
    if lag is None or lag > services.settings.rollout.max_lag_s:
        with step(f"catch up {ref}: {'unknown' if lag is None else f'{lag:g} s'} behind"):
            catch_up(lambda: services.progress(target.index),
                     lambda: server_time(services.items), services.settings.rollout)
    with step(f"validate {ref}"):
        results = validate(services, target)
        on_gates(results)
    if not all(result.passed for result in results):
        raise GateFailed(f"not promoting {ref}: a gate failed; "
                         f"{versions.serving() or 'nothing'} keeps serving")
    if canary is not None:
        baseline = versions.serving()
        with step(f"canary {ref}: {canary.share:.0%} of users for {canary.duration_s:g} s"):
            decided = run_canary(versions, CanaryStore(services.db, services.settings), ref,
                                 canary.share, canary.duration_s, on_figures)
        if decided != "promote":
            outcome = "rolled back" if decided == "rollback" else "aborted"
            raise GateFailed(f"the canary of {ref} was {outcome}; {baseline} keeps serving")
        previous = baseline
    else:
        with step(f"promote {ref}"):
            previous = versions.promote(ref, reason="roll")
    with step("probe the serving alias"):
        probe = probe_serving(services, ref)
        on_gates([probe])
    if not probe.passed:
        if previous is None:
            raise GateFailed(f"the post-promote probe failed and there is no earlier version "
                             f"to roll back to; {ref} serves")
        versions.promote(previous, reason=f"automatic rollback: {probe.detail}")
        raise GateFailed(f"the post-promote probe failed; rolled back to {previous}")
    watch_s = services.settings.rollout.watch_s if watch_s is None else watch_s
    if watch_s > 0 and previous is not None:
        store = CanaryStore(services.db, services.settings)
        reference = _baseline_ctr(store) if canary is not None else None
        with step(f"watch {ref} for {watch_s:g} s"):
            outcome, reason = watch(versions, store, ref, previous, watch_s, reference,
                                    on_figures)
        log.info("watch ended", extra={"outcome": outcome, "reason": reason})
        if outcome == "rolled_back":
            raise GateFailed(f"{reason}; {previous} serves again")
    return previous


def _baseline_ctr(store: CanaryStore) -> float | None:
    """The click-through the canary measured on the serving version's users: the
    reference the watch holds the new version to."""
    current = store.current()
    baseline = (current.figures.get("baseline") or {}) if current is not None else {}
    ctr = baseline.get("ctr")
    return float(ctr) if ctr is not None else None



def catch_up(progress: Callable[[], Progress | None], server_now: Callable[[], Timestamp],
             settings: RolloutSettings) -> None:
    """Wait until an index's ``progress`` is within max_lag_s of the catalog, for as long
    as its watermark moves: the changes written during a backfill reach the new index after
    it, and on busy workers that replay takes a while. The freshness gate judges the end."""
    started = moved_at = logged_at = time.monotonic()
    watermark: Timestamp | None = None
    while True:
        now_progress = progress()
        lag = now_progress.lag_s(server_now()) if now_progress else None
        now = time.monotonic()
        if lag is not None and lag <= settings.max_lag_s:
            return
        if now_progress is not None and now_progress.watermark != watermark:
            watermark, moved_at = now_progress.watermark, now
        if now - started >= settings.catch_up_timeout_s or now - moved_at >= settings.max_lag_s:
            return
        if now - logged_at >= CATCH_UP_LOG_EVERY_S:
            logged_at = now
            log.info("catching up", extra={"lag_s": lag})
        time.sleep(CATCH_UP_POLL_S)
