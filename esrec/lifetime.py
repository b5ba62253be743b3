"""How long what esrec starts lives: servers and child processes of a demo, a bench or a
test session end with it, whether it ends by a signal or is killed."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys
from collections.abc import Iterator
from types import FrameType

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """For ``Popen(preexec_fn=...)``: the kernel sends the child SIGTERM when the thread
    that started it dies, however it dies (SIGKILL included)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


# kafka-python's event loop logs and drops what its tasks raise (with a traceback): a
# SystemExit raised while the main thread runs one (it does when no IO thread drives the
# loop) would be lost and the process would go on as if never asked to stop
_SWALLOWING = ("kafka.",)


def _caller_of(frame: FrameType | None, modules: tuple[str, ...]) -> FrameType | None:
    """The frame that called into ``modules`` (outermost such call), None when outside."""
    caller = None
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).startswith(modules):
            caller = frame.f_back
        frame = frame.f_back
    return caller


def _exit_when_back_in(frame: FrameType, code: int) -> None:
    """Raise SystemExit(code) at the next line ``frame`` runs (the way a debugger stops
    there): a trace function only for that frame, and for its caller should it return."""
    def _trace(traced: FrameType, event: str, _arg: object) -> object:
        if event == "line":
            sys.settrace(None)
            raise SystemExit(code)
        if event == "return" and traced.f_back is not None:
            traced.f_back.f_trace, traced.f_back.f_trace_lines = _trace, True
        return _trace

    frame.f_trace, frame.f_trace_lines = _trace, True
    sys.settrace(lambda *_: None)  # tracing on; frames it is not asked about stay untraced


@contextlib.contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """SIGTERM ends the process as SystemExit(143), so the ``finally`` blocks that stop what
    it started run (by default SIGTERM ends Python without running them). Inside a library
    that swallows exceptions the exit waits until its call returns."""
    def _exit(signum: int, frame: FrameType | None) -> None:
        caller = _caller_of(frame, _SWALLOWING)
        if caller is None:
            raise SystemExit(128 + signum)
        _exit_when_back_in(caller, 128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
