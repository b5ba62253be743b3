"""The watch window after a roll's promote: the new version serves everyone, and what
recall sees of it decides whether it stays.

    begin    a canary document that sends every user (share 1) to the new version, so
             each recall instance and the events consumer count its requests, errors,
             empty or degraded answers, latency and clicks, as in a canary
    watch    every ``canary_poll_s`` for ``watch_s``: once ``canary_min_requests``
             answers are in, an error rate, an empty-or-degraded rate or a p99 over its
             limit ends the watch: the previous version is promoted again (one alias
             switch) and the registry history says why. At the end, after a canary, the
             click-through must also hold against the canary's baseline arm
    keep     the watch ends with the version serving; too little traffic to judge keeps
             it too (the probe passed) and says so
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Literal

from indexer.canary import OnFigures
from indexer.canary_store import ArmCounts, Canary, CanaryStore
from indexer.gates import GateResult
from indexer.lifecycle import Versions
from indexer.settings import RolloutSettings

Outcome = Literal["kept", "rolled_back", "stopped"]


def watch_checks(counts: ArmCounts, settings: RolloutSettings, reference_ctr: float | None,
                 final: bool) -> list[GateResult]:
    """The rules on the new version's own figures; click-through only at the end."""
    empty = counts.rate("empty") + counts.rate("degraded")
    results = [
        GateResult("errors", counts.rate("errors") <= settings.watch_max_error_rate,
                   f"error rate {counts.rate('errors'):.4f} "
                   f"(max {settings.watch_max_error_rate:g})"),
        GateResult("empty", empty <= settings.watch_max_empty_rate,
                   f"empty or degraded {empty:.4f} (max {settings.watch_max_empty_rate:g})"),
        GateResult("latency", counts.p99_s() * 1000 <= settings.watch_max_p99_ms,
                   f"p99 {counts.p99_s() * 1000:g} ms (max {settings.watch_max_p99_ms:g} ms)")]
    if final and reference_ctr is not None:
        results.append(GateResult(
            "ctr", counts.rate("clicks") >= settings.watch_min_ctr_ratio * reference_ctr,
            f"clicks per request {counts.rate('clicks'):.3f} vs the canary baseline's "
            f"{reference_ctr:.3f} (min x{settings.watch_min_ctr_ratio:g})"))
    return results


def watch(versions: Versions, store: CanaryStore, ref: str, previous: str, watch_s: float,
          reference_ctr: float | None = None, on_figures: OnFigures | None = None
          ) -> tuple[Outcome, str]:
    """Watch ``ref`` (serving now) for ``watch_s``; returns the outcome and why."""
    services = versions.services
    settings = services.settings.rollout
    index = services.index_of(ref) or ""
    now = datetime.now(UTC)
    window = Canary(uuid.uuid4().hex[:12], ref, previous, index, 1.0, "running", now,
                    now + timedelta(seconds=watch_s),
                    now + timedelta(seconds=watch_s + settings.canary_expire_grace_s),
                    reason="watch after the promote")
    store.begin(window)
    try:
        while not services.stop.wait(settings.canary_poll_s):
            counts = store.counts(window.id)["candidate"]
            final = datetime.now(UTC) >= window.ends_at
            results = watch_checks(counts, settings, reference_ctr, final)
            figures = {"candidate": counts.figures()}
            if on_figures is not None:
                on_figures(figures, results)
            store.note(window.id, figures)
            enough = counts.requests >= settings.canary_min_requests
            failed = [f"{r.name}: {r.detail}" for r in results if not r.passed]
            if enough and failed:
                reason = f"watch rolled back {ref}: {'; '.join(failed)}"
                store.finish(window.id, "rolled_back", reason, figures)  # routing stops
                versions.promote(previous, reason=reason)
                return "rolled_back", reason
            if final:
                reason = (f"watch passed: {figures['candidate']}" if enough else
                          f"watch kept {ref} on too little traffic to judge "
                          f"({counts.requests} of {settings.canary_min_requests} requests)")
                store.finish(window.id, "promoted", reason, figures)
                return "kept", reason
    except BaseException:
        store.finish(window.id, "aborted", "the watch stopped with its controller", {})
        raise
    store.finish(window.id, "aborted", "the watch stopped with its controller", {})
    return "stopped", f"the watch of {ref} was stopped; {ref} serves"
