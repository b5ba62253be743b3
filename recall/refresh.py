"""A value re-read in the background while the last one is served (stale while
revalidate): the serving version, the popular items.

Only the first call waits for the read. After that an expired value is still answered at
once while one background thread reads it anew, so no request pays for the read and a
slow server cannot stall every request once a ttl. A failed read keeps the last value
(logged) and is retried on the next expired call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger("esrec.recall")
T = TypeVar("T")


class Refreshed(Generic[T]):
    def __init__(self, load: Callable[[T | None], T], ttl_s: float, what: str) -> None:
        """``load(previous)`` reads the value anew (``previous`` lets it reuse parts);
        ``what`` names it in logs and in the refresh thread's name."""
        self.load = load
        self.ttl_s = ttl_s
        self.what = what
        self._lock = threading.Lock()  # one read at a time
        self._claim = threading.Lock()  # guards _refreshing
        self._value: T | None = None
        self._expires = 0.0
        self._refreshing = False

    def current(self) -> T:
        value = self._value
        if value is None:
            with self._lock:
                return self._value if self._value is not None else self._read()
        if time.monotonic() >= self._expires and self._claim_refresh():
            threading.Thread(target=self._refresh_in_background, daemon=True,
                             name=f"esrec-refresh {self.what}").start()
        return value

    def _claim_refresh(self) -> bool:
        """True for the one caller that starts the refresh (never held during I/O)."""
        with self._claim:
            if self._refreshing:
                return False
            self._refreshing = True
            return True

    def _refresh_in_background(self) -> None:
        try:
            with self._lock:
                self._read()
        except Exception as error:  # keep serving the last value; the next call retries
            log.warning(f"cannot refresh {self.what}; serving the last value",
                        extra={"error": repr(error)})
        finally:
            self._refreshing = False

    def _read(self) -> T:
        """Read the value (caller holds the lock)."""
        value = self._value = self.load(self._value)
        self._expires = time.monotonic() + self.ttl_s
        return value
