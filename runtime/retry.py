"""One retry helper: capped exponential backoff with jitter, cancellable sleeps.

Errors in ``retry_on`` wait and try again until the call succeeds or ``stop`` is set
(then the last error propagates), so a SIGTERM is honoured within one sleep. Each retry
is logged once and reported to ``health`` (the process turns degraded, with the reason,
until the call succeeds again).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from runtime.health import Health

T = TypeVar("T")
log = logging.getLogger("esrec.retry")


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.1
    max_s: float = 30.0
    multiplier: float = 2.0

    def delay(self, attempt: int) -> float:
        """Full jitter (AWS architecture blog): spreads retries of many clients apart."""
        return random.uniform(0, min(self.max_s, self.initial_s * self.multiplier ** attempt))


def retry(call: Callable[[], T], *, what: str, backoff: Backoff, stop: threading.Event,
          retry_on: tuple[type[BaseException], ...],
          on_retry: Callable[[BaseException], None] | None = None,
          health: Health | None = None) -> T:
    attempt = 0
    while True:
        try:
            result = call()
        except retry_on as error:
            if stop.is_set():
                raise
            delay = backoff.delay(attempt)
            log.warning("retrying %s in %.2fs after %s: %s", what, delay,
                        type(error).__name__, error)
            if on_retry is not None:
                on_retry(error)
            if health is not None:
                health.retrying(what, error)
            attempt += 1
            if stop.wait(delay):
                raise
            continue
        if attempt and health is not None:
            health.recovered(what)
        return result
