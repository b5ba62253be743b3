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

from esrec.ports import free_port
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
from tests.processes import EsrecProcess, get_json, metric
from tests.proxy import TcpProxy
from towers.artifact import ModelArtifact
from towers.dataset import Collections, write_mongo
from towers.synth import generate

pytestmark = pytest.mark.slow
CATCH_UP_S = 180.0


@pytest.fixture
def prepared(settings: Settings, es: Elasticsearch, artifact_dir: Path,
             tmp_path: Path) -> Iterator[tuple[Services, EsrecProcess]]:
    svc = services(settings, es, artifact_dir)
    write_mongo(generate(CATALOG), svc.db, Collections())
    env = cli_env(settings, ESREC_INDEXER__RETRY_MAX_DELAY_S="2",
                  ESREC_INDEXER__METRICS_PORT=str(free_port()))
    backfill = subprocess.run([sys.executable, "-m", "esrec", "indexer", "backfill",
                               "test-model@1"], env=env, capture_output=True, text=True,
                              timeout=300)
    assert backfill.returncode == 0, backfill.stderr[-2000:]
    daemon = EsrecProcess(env, tmp_path / "daemon.log", "indexer", "run")
    yield svc, daemon
    if daemon.alive():
        daemon.kill()


def _caught_up(svc: Services, index: str, after: float, daemon: EsrecProcess) -> None:
    wait_caught_up(svc, index, after, CATCH_UP_S, lambda: (daemon.alive(), daemon.text()[-3000:]))


def _index(svc: Services) -> str:
    return svc.active_targets()[0].index


def test_sigkill_at_random_moments_loses_nothing(prepared: tuple[Services, EsrecProcess],
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


@pytest.mark.long
def test_elasticsearch_gone_for_20s_then_back(prepared: tuple[Services, EsrecProcess],
                                              es: Elasticsearch, es_url: str,
                                              artifact_dir: Path) -> None:
    """Cut off for 20 s: the daemon waits and retries, /healthz says degraded and why, the
    lag grows on the server's clock; after, both are back to ok / 0 and nothing is lost."""
    svc, daemon = prepared
    index = _index(svc)
    port = int(daemon.env["ESREC_INDEXER__METRICS_PORT"])
    target = urlsplit(es_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 9200)
    daemon.env["ESREC_ES__HOSTS"] = proxy.url
    daemon.start()
    daemon.wait_for("indexer starting")
    _caught_up(svc, index, time.time(), daemon)
    assert get_json(f"http://127.0.0.1:{port}/healthz")[0] == 200
    assert metric(port, "esrec_indexer_lag_seconds") == 0.0
    writer = threading.Thread(target=write_changes, args=(svc.items, 6000, 2, 0.002))
    writer.start()
    time.sleep(2)
    proxy.cut()
    during: list[tuple[int, dict, float]] = []
    for _ in range(10):  # 20 s
        time.sleep(2)
        status, body = get_json(f"http://127.0.0.1:{port}/healthz")
        during.append((status, body, metric(port, "esrec_indexer_lag_seconds") or 0.0))
    assert daemon.alive(), daemon.text()[-3000:]  # waiting and retrying, not dead
    assert get_json(f"http://127.0.0.1:{port}/livez")[0] == 200  # alive: no restart
    proxy.restore()
    writer.join()
    finished = time.time()
    _caught_up(svc, index, finished + 1, daemon)
    after_status, after_body = get_json(f"http://127.0.0.1:{port}/healthz")
    after_lag = metric(port, "esrec_indexer_lag_seconds")
    daemon.stop()
    proxy.cut()
    statuses = [status for status, _, _ in during]
    lags = [lag for _, _, lag in during]
    assert statuses[-1] == 503 and during[-1][1]["status"] == "degraded", during[-1]
    assert "bulk" in during[-1][1]["problems"], during[-1][1]
    assert lags[-1] >= 12 and lags[-1] > lags[2], lags  # growing through the cut
    assert (after_status, after_body["status"], after_lag) == (200, "ok", 0.0), after_body
    assert "retrying bulk" in daemon.text()
    assert mismatches(es, index, svc.items, ModelArtifact.load(artifact_dir)) == []
