"""What a long-running process says about itself on /healthz and /livez.

    ok        the main loop turns and nothing is being retried
    degraded  working around a problem (a server retried, since when, why): not ready
    stalled   the loop has not turned for ``stalled_after_s`` and nothing is being
              retried: not live either (a restart may help; it cannot while retrying)

Readiness (/healthz) is 503 unless ok; liveness (/livez) is 503 only when stalled, so an
orchestrator stops routing to a degraded process without restarting one that is merely
waiting for a server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any


class Health:
    def __init__(self, stalled_after_s: float = 30.0,
                 detail: Callable[[], dict[str, Any]] | None = None) -> None:
        self.stalled_after_s = stalled_after_s
        self.detail = detail or dict
        self.last_turn = time.monotonic()
        self._lock = threading.Lock()
        self._problems: dict[str, tuple[str, datetime, float]] = {}  # what -> (why, since, at)

    def turned(self) -> None:
        """The main loop made a turn."""
        self.last_turn = time.monotonic()

    def retrying(self, what: str, error: BaseException | str) -> None:
        """``what`` failed and is being retried (called on every attempt)."""
        reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        with self._lock:
            since = self._problems.get(what, ("", datetime.now(UTC), 0.0))[1]
            self._problems[what] = (reason[:300], since, time.monotonic())

    def recovered(self, what: str) -> None:
        with self._lock:
            self._problems.pop(what, None)

    def status(self) -> tuple[str, dict[str, Any]]:
        now = time.monotonic()
        with self._lock:
            problems = dict(self._problems)
        idle = now - max([self.last_turn, *(at for _, _, at in problems.values())])
        if idle >= self.stalled_after_s:
            state = "stalled"
        elif problems:
            state = "degraded"
        else:
            state = "ok"
        body: dict[str, Any] = {
            "status": state, "seconds_since_last_turn": round(now - self.last_turn, 3),
            **({"problems": {what: {"reason": why, "since": since.isoformat()}
                             for what, (why, since, _) in problems.items()}}
               if problems else {}),
            **self.detail()}
        return state, body

    def ready(self) -> tuple[bool, dict[str, Any]]:
        state, body = self.status()
        return state == "ok", body

    def live(self) -> tuple[bool, dict[str, Any]]:
        state, body = self.status()
        return state != "stalled", body
