"""Model versions: dual-write during a v2 build, gates, promote / rollback, retire.

The daemon runs in a thread and follows the registry live; v2 has other dims than v1
(16 vs 32), so a query that mixed a user vector of one version with the index of the
other would fail outright, not just rank badly.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from elasticsearch import Elasticsearch

from esrec.settings import Settings
from indexer.layout import LIVE, VECTOR, resolve_alias
from indexer.lifecycle import VersionError, Versions
from indexer.service import Services
from tests.indexer.helpers import (
    CATALOG,
    ServingProbe,
    cli_env,
    mismatches,
    services,
    wait_caught_up,
    write_changes,
)
from towers.artifact import ModelArtifact
from towers.dataset import Collections, write_mongo
from towers.synth import generate

pytestmark = pytest.mark.slow
V1, V2 = "test-model@1", "test-model@2"


class DaemonThread:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.daemon = svc.indexer(svc.active_targets(), follow=True)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.daemon.run()
        except BaseException as error:
            self.error = error

    def alive(self) -> tuple[bool, str]:
        return self.thread.is_alive(), repr(self.error)

    def stop(self) -> None:
        self.svc.stop.set()
        self.thread.join(60)
        assert self.error is None, self.error


@pytest.fixture
def rollout(settings: Settings, es: Elasticsearch, artifact_dir: Path,
            v2_dir: Path) -> Iterator[tuple[Services, Versions, DaemonThread]]:
    """v1 built and serving with a following daemon; v2 published, not built."""
    fast = settings.model_copy(update={"rollout": settings.rollout.model_copy(
        update={"follow_interval_s": 0.2})})
    svc = services(fast, es, artifact_dir)
    svc.registry.publish(v2_dir)
    write_mongo(generate(CATALOG), svc.db, Collections())
    versions = Versions(svc)
    assert versions.build(V1).done
    versions.promote(V1)
    daemon = DaemonThread(svc)
    yield svc, versions, daemon
    if daemon.thread.is_alive():
        daemon.stop()


def _run_cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "esrec", "models", *args], text=True,
                          capture_output=True, env=cli_env(settings, **env), timeout=300)


def _wait_for_target(daemon: DaemonThread, index: str, present: bool) -> None:
    deadline = time.monotonic() + 30
    while (index in daemon.daemon.indices) != present:
        assert time.monotonic() < deadline, f"daemon targets: {daemon.daemon.indices}"
        time.sleep(0.1)


def test_change_during_v2_backfill_lands_in_both_indexes(rollout, es, artifact_dir, v2_dir):
    svc, versions, daemon = rollout
    made: list[int] = []
    writer = threading.Thread(target=lambda: made.append(
        write_changes(svc.items, 3000, seed=5, pace_s=0.002)))
    writer.start()
    time.sleep(0.5)
    report = versions.build(V2)
    assert writer.is_alive(), "the writes must overlap the whole v2 backfill"
    writer.join()
    finished = time.time()
    v1_index, v2_index = svc.index_of(V1), report.index
    _wait_for_target(daemon, v2_index, present=True)
    for index in (v1_index, v2_index):
        wait_caught_up(svc, index, finished + 1, 120, daemon.alive)
    assert made[0] >= 3000 and report.done
    assert svc.registry.get(V2).state == "ready"
    assert mismatches(es, v1_index, svc.items, ModelArtifact.load(artifact_dir)) == []
    assert mismatches(es, v2_index, svc.items, ModelArtifact.load(v2_dir)) == []

    rolled = _run_cli(svc.settings, "roll", V2)
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert "PASS  ann" in rolled.stdout and f"serving {V2} (was {V1})" in rolled.stdout
    assert versions.serving() == V2
    status = _run_cli(svc.settings, "status")
    serving_line = next(line for line in status.stdout.splitlines() if line.endswith("*"))
    assert serving_line.startswith(V2) and "serving" in serving_line

    with pytest.raises(VersionError, match="is serving"):
        versions.retire(V2, grace_s=0)
    back = _run_cli(svc.settings, "rollback")
    assert back.returncode == 0 and f"serving {V1}" in back.stdout, back.stderr
    retired = _run_cli(svc.settings, "retire", V2, "--grace-s", "0")
    assert retired.returncode == 0, retired.stderr
    _wait_for_target(daemon, v2_index, present=False)
    assert not es.indices.exists(index=v2_index)
    assert [entry["state"] for entry in svc.registry.get(V2).history] == [
        "published", "building", "ready", "serving", "ready", "retired"]
    daemon.stop()


def test_gate_failure_blocks_roll_and_v1_keeps_serving(rollout, es):
    svc, versions, daemon = rollout
    v2_index = versions.build(V2).index
    _wait_for_target(daemon, v2_index, present=True)
    es.indices.refresh(index=v2_index)
    holes = [hit["_id"] for hit in es.search(index=v2_index, size=50, query=LIVE,
                                             source=False)["hits"]["hits"]]
    for doc_id in holes:  # an artificially incomplete index
        es.delete(index=v2_index, id=doc_id, refresh=True)
    for hit in es.search(index=v2_index, size=2000, query=LIVE, source=[VECTOR])["hits"]["hits"]:
        es.update(index=v2_index, id=hit["_id"],  # and every stored vector turned around
                  doc={VECTOR: [-x for x in hit["_source"][VECTOR]]})
    es.indices.refresh(index=v2_index)

    started = time.monotonic()
    refused = _run_cli(svc.settings, "roll", V2, ESREC_ROLLOUT__MAX_LAG_S="4")
    assert refused.returncode == 1
    assert "FAIL  coverage" in refused.stdout
    assert "FAIL  vectors   0/50 sampled items match" in refused.stdout
    assert time.monotonic() - started < 120  # the vectors gate looks again for max_lag_s only
    assert f"not promoting {V2}: a gate failed" in refused.stderr
    assert f"{V1} keeps serving" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert versions.serving() == V1 and svc.registry.get(V2).state == "ready"


def test_promote_and_rollback_under_recall_load_never_mix_versions(rollout, es):
    svc, versions, daemon = rollout
    v2_index = versions.build(V2).index
    _wait_for_target(daemon, v2_index, present=True)
    with ServingProbe(svc, es) as probe:
        for _ in range(4):
            versions.promote(V2)
            time.sleep(0.3)
            assert versions.rollback() == (V2, V1)
            time.sleep(0.3)
        failures, answered = probe.stop()
    assert failures == []
    assert answered[V1] > 10 and answered[V2] > 10
    assert resolve_alias(es, svc.settings.index.serving_alias) == svc.index_of(V1)


def test_failed_post_promote_probe_rolls_back_by_itself(rollout, monkeypatch):
    import indexer.rollout as rollout_module
    from esrec.cli import main
    from indexer.gates import GateResult

    svc, versions, daemon = rollout
    versions.build(V2)
    _wait_for_target(daemon, svc.index_of(V2), present=True)
    for name, value in cli_env(svc.settings).items():
        if name.startswith("ESREC_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(rollout_module, "probe_serving", lambda services, ref: GateResult(
        "probe", False, "5 user kNN queries: 5 empty"))  # what a broken index would give

    result = CliRunner().invoke(main, ["models", "roll", V2])
    assert result.exit_code == 1, result.output
    assert f"the post-promote probe failed; rolled back to {V1}" in result.output
    assert versions.serving() == V1
    assert [entry["state"] for entry in svc.registry.get(V2).history][-2:] == [
        "serving", "ready"]
    assert "automatic rollback" in svc.registry.get(V1).history[-1]["reason"]
    daemon.stop()
