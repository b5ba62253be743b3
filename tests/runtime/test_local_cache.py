"""Where esrec keeps its files on a machine, and when an unused one goes (runtime.local_cache)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from runtime.local_cache import cache_dir, unused


def test_the_cache_follows_xdg_cache_home_and_an_empty_one_means_the_home(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir("models") == tmp_path / "esrec" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert cache_dir("models") == Path.home() / ".cache" / "esrec" / "models"


def test_an_entry_is_unused_once_its_time_is_older_than_the_days(tmp_path: Path) -> None:
    entry = tmp_path / "entry"
    entry.write_text("x")
    assert not unused(entry, 30)
    then = time.time() - 31 * 86400
    os.utime(entry, (then, then))
    assert unused(entry, 30) and not unused(entry, 32)
    with pytest.raises(OSError):
        unused(tmp_path / "gone")
