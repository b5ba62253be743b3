"""A change stream invalidated under the daemon (`esrec indexer run` as a real process):
the items collection dropped or renamed. With `--on-history-lost=resync` the daemon
rebuilds into a fresh index from the collection as it is now and follows it on; without,
it exits 4 with that fix, never a traceback or a crash loop."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from esrec.ports import free_port
from esrec.settings import Settings
from indexer.layout import resolve_alias
from indexer.lifecycle import Versions
from indexer.service import Services
from tests.indexer.helpers import CATALOG, cli_env, mismatches, services
from tests.processes import EsrecProcess, get_json
from towers.artifact import ModelArtifact
from towers.dataset import Collections, write_mongo
from towers.synth import generate

pytestmark = pytest.mark.slow
V1 = "test-model@1"


def _invalidate(svc: Services, how: str) -> None:
    if how == "drop":
        svc.items.drop()
    else:
        svc.items.rename(f"{svc.items.name}-old")


def _built(settings: Settings, es: Elasticsearch, artifact_dir: Path) -> Services:
    svc = services(settings, es, artifact_dir)
    write_mongo(generate(CATALOG), svc.db, Collections())
    versions = Versions(svc)
    assert versions.build(V1).done
    versions.promote(V1)
    return svc


def test_without_the_resync_policy_the_daemon_exits_4_with_the_fix(
        settings: Settings, es: Elasticsearch, artifact_dir: Path, tmp_path: Path) -> None:
    svc = _built(settings, es, artifact_dir)
    daemon = EsrecProcess(cli_env(settings), tmp_path / "daemon.log", "indexer", "run").start()
    daemon.wait_for("indexer starting")
    time.sleep(1.0)  # the stream is open
    _invalidate(svc, "drop")
    assert daemon.process is not None
    assert daemon.process.wait(60) == 4, daemon.text()[-3000:]
    assert "saw 'drop'" in daemon.text() and "--on-history-lost=resync" in daemon.text()
    assert "Traceback" not in daemon.text()


# long: a rename takes the drop's resync path (the same event family ends the stream)
@pytest.mark.parametrize("how", ["drop", pytest.param("rename", marks=pytest.mark.long)])
def test_with_the_resync_policy_the_daemon_rebuilds_and_follows_the_new_collection(
        settings: Settings, es: Elasticsearch, artifact_dir: Path, tmp_path: Path,
        how: str) -> None:
    svc = _built(settings, es, artifact_dir)
    before = svc.index_of(V1)
    port = free_port()
    daemon = EsrecProcess(cli_env(settings, ESREC_INDEXER__METRICS_PORT=str(port)),
                          tmp_path / "daemon.log", "indexer", "run",
                          "--on-history-lost=resync").start()
    try:
        daemon.wait_for("indexer starting")
        time.sleep(1.0)
        _invalidate(svc, how)
        daemon.wait_for("resynced after a history gap", 120)
        fresh = svc.index_of(V1)
        assert fresh is not None and fresh != before
        artifact = ModelArtifact.load(artifact_dir)
        for n in range(5):  # the collection, recreated, is followed from the resync on
            svc.items.insert_one({**generate(CATALOG).items[n], "title": f"again {n}"})
        deadline = time.monotonic() + 120
        while problems := mismatches(es, fresh, svc.items, artifact):
            assert daemon.alive() and time.monotonic() < deadline, (problems,
                                                                     daemon.text()[-3000:])
            time.sleep(0.5)
        assert es.count(index=fresh)["count"] == 5  # nothing of the gone collection
        assert get_json(f"http://127.0.0.1:{port}/healthz")[0] == 200
        assert resolve_alias(es, settings.index.serving_alias) == fresh  # serving it
    finally:
        daemon.stop()
    assert "Traceback" not in daemon.text()
