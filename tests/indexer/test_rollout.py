"""A roll's catch-up wait before its gates (no server: progress is fed in)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from bson.timestamp import Timestamp

from indexer import rollout
from indexer.canary_store import ArmCounts
from indexer.checkpoint import Progress
from indexer.rollout import catch_up
from indexer.settings import RolloutSettings
from indexer.watch import watch_checks

NOW = Timestamp(1_000, 0)


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollout, "CATCH_UP_POLL_S", 0.01)


def _feed(watermarks: Iterator[int]) -> tuple[Callable[[], Progress], list[int]]:
    seen: list[int] = []

    def progress() -> Progress:
        seen.append(next(watermarks))
        return Progress(NOW, Timestamp(seen[-1], 0), False, None)
    return progress, seen


def test_waits_while_the_index_replays_and_returns_once_within_max_lag() -> None:
    progress, seen = _feed(iter([900, 940, 960, 975, 990, 999]))
    catch_up(progress, lambda: NOW, RolloutSettings(max_lag_s=30))
    assert seen == [900, 940, 960, 975]  # lags 100, 60, 40, then 25 <= 30


def test_stops_waiting_when_the_watermark_does_not_move_for_max_lag() -> None:
    progress, seen = _feed(iter(lambda: 900, None))
    started = time.monotonic()
    catch_up(progress, lambda: NOW, RolloutSettings(max_lag_s=0.3))
    assert 0.3 <= time.monotonic() - started < 3 and len(seen) > 3


def test_stops_at_the_timeout_even_while_it_moves() -> None:
    counter = iter(range(100, 10**6))
    progress, seen = _feed(counter)
    started = time.monotonic()
    catch_up(progress, lambda: NOW, RolloutSettings(max_lag_s=5, catch_up_timeout_s=0.3))
    assert 0.3 <= time.monotonic() - started < 3 and len(seen) > 3


def test_a_timeout_of_zero_looks_once() -> None:
    progress, seen = _feed(iter([900, 990]))
    catch_up(progress, lambda: NOW, RolloutSettings(catch_up_timeout_s=0))
    assert seen == [900]


def test_the_watch_rules_read_the_new_versions_own_figures() -> None:
    settings = RolloutSettings(watch_max_error_rate=0.01, watch_max_empty_rate=0.05,
                               watch_max_p99_ms=250, watch_min_ctr_ratio=0.9)
    healthy = ArmCounts(requests=1000, errors=5, empty=10, degraded=20, clicks=300)
    healthy.latency[3] = 1000  # every answer within 30 ms
    assert all(r.passed for r in watch_checks(healthy, settings, 0.3, final=True))
    assert [r.name for r in watch_checks(healthy, settings, None, final=True)] == [
        "errors", "empty", "latency"]  # no canary: no click-through reference
    failing = {r.name for r in watch_checks(
        ArmCounts(requests=1000, errors=20, empty=40, degraded=20, clicks=100,
                  latency=[0] * 15 + [1000]), settings, 0.3, final=True) if not r.passed}
    assert failing == {"errors", "empty", "latency", "ctr"}
    assert "ctr" not in {r.name for r in watch_checks(healthy, settings, 0.3, final=False)}
