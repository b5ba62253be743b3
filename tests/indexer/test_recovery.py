"""Crash and outage recovery of the real daemon process, checked document by document.

Each test streams many catalog changes (inserts, updates, replaces, deletes, and
transactions that touch one document twice) while the daemon is SIGKILLed at random
moments or the network to Elasticsearch is cut for 20 s, then waits for the daemon to catch
up and requires the index to equal the catalog: every live item with the vector of its latest
version, no deleted item live, no stale version.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from elasticsearch import Elasticsearch

from esrec.settings import Settings
from indexer.service import Services
from tests.indexer.helpers import (
    CATALOG,
    cli_env,
    mismatches,
    services,
    wait_caught_up,
    write_changes,
)
from tests.proxy import TcpProxy
from towers.artifact import ModelArtifact
from towers.dataset import Collections, write_mongo
from towers.synth import generate

pytestmark = pytest.mark.slow
CATCH_UP_S = 180.0


class Daemon:
    """`esrec indexer run` as a real process, restartable."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "esrec", "indexer", "run"], env=self.env,
                stdout=out, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            assert self.process.wait(60) == 0, self.log.read_text()[-2000:]

    def wait_for(self, line: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while line not in self.log.read_text():
            assert time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@pytest.fixture
def prepared(settings: Settings, es: Elasticsearch, artifact_dir: Path,
             tmp_path: Path) -> Iterator[tuple[Services, Daemon]]:
    svc = services(settings, es, artifact_dir)
    write_mongo(generate(CATALOG), svc.db, Collections())
    env = cli_env(settings, ESREC_INDEXER__RETRY_MAX_DELAY_S="2")
    backfill = subprocess.run([sys.executable, "-m", "esrec", "indexer", "backfill",
                               "test-model@1"], env=env, capture_output=True, text=True,
                              timeout=300)
    assert backfill.returncode == 0, backfill.stderr[-2000:]
    daemon = Daemon(env, tmp_path / "daemon.log")
    yield svc, daemon
    if daemon.alive():
        daemon.kill()


def _caught_up(svc: Services, index: str, after: float, daemon: Daemon) -> None:
    wait_caught_up(svc, index, after, CATCH_UP_S,
                   lambda: (daemon.alive(), daemon.log.read_text()[-3000:]))


def _index(svc: Services) -> str:
    return svc.active_targets()[0].index


def test_sigkill_at_random_moments_loses_nothing(prepared: tuple[Services, Daemon],
                                                 es: Elasticsearch, artifact_dir: Path) -> None:
    svc, daemon = prepared
    index = _index(svc)
    made: list[int] = []
    writer = threading.Thread(target=lambda: made.append(write_changes(svc.items, 20_000, 1)))
    daemon.start()
    writer.start()
    rng, kills = random.Random(7), 0
    while kills < 6 or writer.is_alive():
        time.sleep(rng.uniform(1.0, 3.0))
        if kills < 6:
            daemon.kill()
            kills += 1
            daemon.start()
    writer.join()
    finished = time.time()
    _caught_up(svc, index, finished + 1, daemon)
    daemon.stop()
    assert made[0] >= 20_000 and kills >= 5
    assert mismatches(es, index, svc.items, ModelArtifact.load(artifact_dir)) == []


def test_elasticsearch_gone_for_20s_then_back(prepared: tuple[Services, Daemon],
                                              es: Elasticsearch, es_url: str,
                                              artifact_dir: Path) -> None:
    svc, daemon = prepared
    index = _index(svc)
    target = urlsplit(es_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 9200)
    daemon.env["ESREC_ES__HOSTS"] = proxy.url
    daemon.start()
    writer = threading.Thread(target=write_changes, args=(svc.items, 6000, 2, 0.002))
    writer.start()
    daemon.wait_for("indexer starting")
    time.sleep(2)
    proxy.cut()
    time.sleep(20)
    assert daemon.alive(), daemon.log.read_text()[-3000:]  # waiting and retrying, not dead
    proxy.restore()
    writer.join()
    finished = time.time()
    _caught_up(svc, index, finished + 1, daemon)
    daemon.stop()
    proxy.cut()
    assert "retrying bulk" in daemon.log.read_text()
    assert mismatches(es, index, svc.items, ModelArtifact.load(artifact_dir)) == []
