"""Structured logs: one line per record, ``key=value`` pairs a log pipeline can parse."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **{k: v for k, v in vars(record).items() if k not in _STANDARD},
        }
        if record.exc_info:
            fields["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return " ".join(f"{k}={_quote(v)}" for k, v in fields.items())


def _quote(value: object) -> str:
    text = str(value)
    return f'"{text}"' if (" " in text or "=" in text or not text) else text


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for chatty in ("kafka", "pymongo"):  # a line per request otherwise
        logging.getLogger(chatty).setLevel(logging.WARNING)
    # each failed attempt is logged once, by esrec.retry, with what happens next
    logging.getLogger("elastic_transport").setLevel(logging.ERROR)
