"""A roll: build -> validate -> promote -> probe, with an automatic rollback.

    build     unless the version is ready or serving already
    validate  every gate (gates.validate); one failure refuses the promote: the version
              that served keeps serving
    promote   one atomic alias switch
    probe     user-tower kNN on the serving alias; a failure promotes the previous version
              again (automatic rollback, with the probe's detail in the registry history)
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from indexer.backfill import OnProgress
from indexer.gates import GateResult, probe_serving, validate
from indexer.lifecycle import VersionError, Versions

# what a caller sees of a roll: a step starts (context manager around it), gates are known
Step = Callable[[str], AbstractContextManager[None]]
OnGates = Callable[[list[GateResult]], None]


class GateFailed(VersionError):
    """A gate refused the promote, or the probe after it failed (rolled back)."""


def _no_step(_what: str) -> AbstractContextManager[None]:
    return nullcontext()


def roll(versions: Versions, ref: str, step: Step = _no_step,
         on_gates: OnGates = lambda _results: None,
         on_progress: OnProgress | None = None) -> str | None:
    """Roll ``ref`` out; returns the version that served before. Raises GateFailed when
    a gate refuses the promote or the probe rolled it back."""
    services = versions.services
    if services.registry.get(ref).state not in ("ready", "serving"):
        with step(f"build {ref}"):
            report = versions.build(ref, on_progress)
        if not report.done:
            raise VersionError(f"stopped before {ref}'s backfill finished",
                               "run the build again to resume it")
    with step(f"validate {ref}"):
        results = validate(services, services.target(ref))
        on_gates(results)
    if not all(result.passed for result in results):
        raise GateFailed(f"not promoting {ref}: a gate failed; "
                         f"{versions.serving() or 'nothing'} keeps serving")
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
    return previous

