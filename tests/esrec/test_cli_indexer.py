"""`esrec indexer backfill` and `status` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from elasticsearch import Elasticsearch

from esrec.settings import Settings
from tests.indexer.helpers import cli_env, services
from towers.dataset import Collections, write_mongo
from towers.synth import SynthConfig, generate


def _esrec(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "esrec", *args], env=cli_env(settings),
                          capture_output=True, text=True, timeout=300)


def test_backfill_then_status(settings: Settings, es: Elasticsearch, artifact_dir: Path) -> None:
    svc = services(settings, es, artifact_dir)
    write_mongo(generate(SynthConfig(items=300, users=5, topics=5, mean_interactions=1)),
                svc.db, Collections())
    svc.items.insert_one({"_id": "poison", "title": "p", "price": "not a number"})

    not_yet = _esrec(settings, "indexer", "run")
    assert not_yet.returncode == 1
    assert "esrec indexer backfill NAME@VERSION" in not_yet.stderr

    filled = _esrec(settings, "indexer", "backfill", "test-model@1")
    assert filled.returncode == 0, filled.stderr[-2000:]
    report = json.loads(filled.stdout)
    assert (report["documents"], report["done"]) == (301, True)
    again = json.loads(_esrec(settings, "indexer", "backfill", "test-model@1").stdout)
    assert again["done"] and again["documents"] == 301  # already done: nothing redone

    status = json.loads(_esrec(settings, "indexer", "status").stdout)
    (version,) = status["versions"]
    assert (status["mongo_items"], version["documents"]) == (301, 300)
    assert not version["followed"] and "esrec indexer run" in version["note"]  # no daemon
    assert version["ref"] == "test-model@1" and version["index"].endswith("-g1")
    assert status["dead_letters"] == 1
    assert status["latest_dead_letters"][0]["error"].startswith("price: expected a finite")

    purged = json.loads(_esrec(settings, "indexer", "purge-tombstones").stdout)
    assert purged["deleted"] == {version["index"]: 0}

    unknown = _esrec(settings, "indexer", "backfill", "nope@3")
    assert unknown.returncode == 1 and "nope@3 is not in the registry" in unknown.stderr


def test_a_serving_alias_on_two_indices_is_refused_in_one_line(
        settings: Settings, es: Elasticsearch, artifact_dir: Path) -> None:
    """Someone pointed the serving alias at two indices by hand: every command that reads
    it says so and how to fix it (exit 1), never a traceback."""
    services(settings, es, artifact_dir)
    alias = settings.index.serving_alias
    for suffix in ("a", "b"):
        es.indices.create(index=f"{settings.index.prefix}-hand-{suffix}",
                          aliases={alias: {}})
    result = _esrec(settings, "models", "status")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"esrec: alias {alias} points at 2 indices"), lines
    assert lines[1].startswith("  what to do: point it at one: esrec models promote NAME@V")
    assert "Traceback" not in result.stderr
