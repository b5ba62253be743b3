"""A backfill's pace (unit, no server): pages wait for their share of time at a limit,
not at all without one, and a stop ends a wait at once."""

from __future__ import annotations

import threading
import time

from indexer.snapshot import Pace


def _elapsed(pace: Pace, pages: int, docs: int) -> float:
    started = time.monotonic()
    for _ in range(pages):
        pace.wait(docs)
    return time.monotonic() - started


def test_pages_wait_for_their_share_of_time() -> None:
    # 5 pages of 100 at 1000 a second: the first goes at once, the fifth after 0.4 s
    elapsed = _elapsed(Pace(1000, threading.Event()), 5, 100)
    assert 0.39 <= elapsed < 2.0


def test_no_limit_and_a_stop_do_not_wait() -> None:
    assert _elapsed(Pace(0, threading.Event()), 50, 500) < 0.05
    stop = threading.Event()
    stop.set()
    assert _elapsed(Pace(1, stop), 5, 100) < 0.05  # 400 s of pacing, ended by the stop
