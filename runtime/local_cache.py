"""esrec's files on this machine, under ``$XDG_CACHE_HOME/esrec`` (``~/.cache/esrec``):
what can always be fetched or rebuilt again (Kafka's jars, pulled model versions, the
towers' kept weights), and the one rule for when an unused entry goes."""

from __future__ import annotations

import os
import time
from pathlib import Path

UNUSED_DAYS = 30  # an entry no process used for this long goes when another is written


def cache_dir(name: str) -> Path:
    """``name``'s folder in the user's cache (an empty XDG_CACHE_HOME counts as unset)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "esrec" / name


def unused(path: Path, days: float = UNUSED_DAYS) -> bool:
    """Whether ``path`` was last used (its modification time, which each use touches)
    more than ``days`` ago; OSError if it is gone."""
    return path.stat().st_mtime < time.time() - days * 86400
