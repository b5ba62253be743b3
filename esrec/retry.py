"""One retry helper: capped exponential backoff with jitter, cancellable sleeps.

Errors in ``never_retry`` propagate at once; everything else in ``retry_on`` waits and
tries again until it succeeds or ``stop`` is set (then the last error propagates), so a
SIGTERM is honoured within one sleep.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

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
          never_retry: tuple[type[BaseException], ...] = (),
          on_retry: Callable[[BaseException], None] | None = None) -> T:
    attempt = 0
    while True:
        try:
            return call()
        except never_retry:
            raise
        except retry_on as error:
            if stop.is_set():
                raise
            delay = backoff.delay(attempt)
            log.warning("retrying %s in %.2fs after %s: %s", what, delay,
                        type(error).__name__, error)
            if on_retry is not None:
                on_retry(error)
            attempt += 1
            if stop.wait(delay):
                raise
