"""How long what esrec starts lives: servers and child processes of a demo, a bench or a
test session end with it, whether it ends by a signal or is killed."""

from __future__ import annotations

import contextlib
import ctypes
import signal
from collections.abc import Iterator
from types import FrameType

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """For ``Popen(preexec_fn=...)``: the kernel sends the child SIGTERM when the thread
    that started it dies, however it dies (SIGKILL included)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@contextlib.contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """SIGTERM ends the process as SystemExit(143), so the ``finally`` blocks that stop what
    it started run (by default SIGTERM ends Python without running them)."""
    def _exit(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
