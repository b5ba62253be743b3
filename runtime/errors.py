"""One error family for every esrec package: what went wrong, what to do, and which kind.

The kind decides how a surface reports it, in one table here: the CLI's exit code and the
HTTP status. A package raises its own subclass (``RegistryError``, ``HistoryLost``...)
with a message that names the problem and a hint that names the fix; nobody re-lists
exception classes to turn them into exit codes.

    refused      the input, a setting or the current state does not allow it; fix, rerun
    settings     a setting cannot be used (exit 2, like a usage error)
    unavailable  a server or a dependency is not there now; retrying later can succeed
    lost         data was missed (a history gap); a resync is needed
"""

from __future__ import annotations

from enum import Enum
from typing import ClassVar


class Kind(Enum):
    REFUSED = "refused"
    SETTINGS = "settings"
    UNAVAILABLE = "unavailable"
    LOST = "lost"


EXIT_CODES: dict[Kind, int] = {Kind.REFUSED: 1, Kind.SETTINGS: 2, Kind.UNAVAILABLE: 3,
                               Kind.LOST: 4}
HTTP_STATUSES: dict[Kind, int] = {Kind.REFUSED: 422, Kind.SETTINGS: 500,
                                  Kind.UNAVAILABLE: 503, Kind.LOST: 503}


class EsrecError(Exception):
    """Base of every error esrec raises on purpose; ``hint`` says what to do about it."""

    kind: ClassVar[Kind] = Kind.REFUSED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class Refused(EsrecError):
    kind = Kind.REFUSED


class InvalidSettings(EsrecError):
    kind = Kind.SETTINGS


class Unavailable(EsrecError):
    kind = Kind.UNAVAILABLE


class DataLost(EsrecError):
    kind = Kind.LOST
