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

import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from indexer.canary_store import (
    ARMS,
    Arm,
    ArmCounts,
    Canary,
    CanaryError,
    CanaryStore,
)
from indexer.gates import GateResult
from indexer.lifecycle import Versions
from indexer.settings import RolloutSettings


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
    hours), then rolls it back: never a promote on too little traffic, nor on too few
    clicks to compare."""
    enough = all(counts[arm].requests >= settings.canary_min_requests for arm in ARMS)
    final = now >= canary.ends_at
    results = checks(counts, settings, final)
    if enough and not all(result.passed for result in results):
        return "rollback", results
    if not final:
        return None, results
    clicked = counts["baseline"].clicks >= settings.canary_min_clicks
    if enough and clicked:
        return "promote", results
    if now < canary.ends_at + (canary.expires_at - canary.ends_at) / 2:
        return None, results
    if not enough:
        results.append(GateResult("traffic", False, "fewer than "
                                  f"{settings.canary_min_requests} requests per arm"))
    else:
        results.append(GateResult(
            "traffic", False, f"{counts['baseline'].clicks} clicks on the baseline arm "
            f"(min {settings.canary_min_clicks}): do click events reach `esrec recall "
            "events` with the answer's request_id?"))
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
