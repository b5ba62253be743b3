"""Dead-letter redrive of catalog documents: parked by a rule that turned out wrong, they
are indexed from their current state once the rule is fixed; the redriven letters leave,
a document that still fails is parked anew, a deleted one becomes a tombstone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from esrec.settings import Settings
from indexer.layout import DELETED
from indexer.lifecycle import Versions
from tests.indexer.helpers import CATALOG, cli_env, mismatches, services
from towers.dataset import Collections, write_mongo
from towers.synth import generate

pytestmark = pytest.mark.slow
V1 = "test-model@1"


def _cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "esrec", "indexer", "dead-letters", *args],
                          capture_output=True, text=True, env=cli_env(settings, **env),
                          timeout=300)


def test_parked_documents_are_indexed_after_the_fix(settings: Settings, es: Elasticsearch,
                                                    artifact_dir: Path) -> None:
    # the rule that is wrong: every item must have a subtitle (few have one)
    strict = settings.model_copy(update={"indexer": settings.indexer.model_copy(
        update={"required_fields": ["subtitle"]})})
    svc = services(strict, es, artifact_dir)
    dataset = generate(CATALOG)
    for n, item in enumerate(dataset.items):
        if n % 100:  # 20 of the 2000 have no subtitle
            item["subtitle"] = "s"
    dataset.items[301]["price"] = "cheap"  # still wrong after the fix
    write_mongo(dataset, svc.db, Collections())
    assert Versions(svc).build(V1).done
    parked = svc.dead_letters.collection
    assert parked.count_documents({"error": "subtitle: required field is missing"}) == 20
    assert parked.count_documents({"error": {"$regex": "^price"}}) == 1

    listed = _cli(settings, "list", "--reason", "subtitle", "--since", "1h")
    assert listed.returncode == 0, listed.stderr
    assert "20 dead letters" in listed.stderr and len(listed.stdout.splitlines()) == 20
    shown = _cli(settings, "show", "i100")
    assert json.loads(shown.stdout)[0]["stage"] == "validate"
    assert _cli(settings, "show", "nope").returncode == 1

    svc.items.delete_one({"_id": "i200"})  # gone meanwhile: redriven as a tombstone
    redriven = _cli(settings, "redrive", "--reason", "subtitle")  # the rule is gone here
    assert redriven.returncode == 0, redriven.stderr
    report = json.loads(redriven.stdout)
    assert report == {"letters": 20, "items": 20, "indexed": 19, "deleted": 1,
                      "parked_again": 0, "versions": [V1]}
    assert parked.count_documents({}) == 1  # only the price letter is left
    index = svc.index_of(V1)
    assert index is not None
    assert mismatches(es, index, svc.items, svc.registry.pull(V1)) == [
        "i301: missing"]  # everything else equals the catalog, i200 included
    assert es.get(index=index, id="i200")["_source"][DELETED] is True

    again = _cli(settings, "redrive")  # the price is still a word: parked anew
    assert json.loads(again.stdout)["parked_again"] == 1
    letter = parked.find_one({})
    assert letter is not None and letter["doc_id"] == "i301"
    assert letter["error"].startswith("price: expected a finite number")
