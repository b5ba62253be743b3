"""SIGTERM as SystemExit(143) (unit, no server): at once in esrec's code, and only once the
main thread is out of a library that would swallow it (kafka-python's event loop logs
and drops what its tasks raise)."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from typing import Any

import pytest

from esrec.lifetime import exit_on_sigterm

SWALLOWING = textwrap.dedent("""
    def task(os, signal, time):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.3)
        except BaseException:
            return "swallowed"
        return "done"
""")


def _library(name: str) -> Any:
    namespace: dict[str, Any] = {"__name__": name}
    exec(SWALLOWING, namespace)  # a function whose module is ``name``
    return namespace["task"]


def test_a_sigterm_exits_at_once() -> None:
    with pytest.raises(SystemExit) as exit, exit_on_sigterm():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert exit.value.code == 143


def test_a_sigterm_inside_kafka_python_exits_once_the_call_returns() -> None:
    task = _library("kafka.net.selector")
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit, exit_on_sigterm():
        outcome = task(os, signal, time)  # not interrupted: the exit waits for its return
        time.sleep(5)
    assert outcome == "done" and exit.value.code == 143
    # elsewhere the same code would have lost it: the case the wait exists for
    with pytest.raises(AssertionError), exit_on_sigterm():
        assert _library("elsewhere")(os, signal, time) != "swallowed"
    assert signal.getsignal(signal.SIGTERM) == before  # restored
