"""Related collections: a version whose items read their category's name from another
collection. Indexing joins them as training did, and renaming a category re-embeds its
items (new vectors, newer versions) through the running daemon; the others stay."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from elasticsearch import Elasticsearch, helpers

from esrec.settings import Settings
from indexer.layout import VECTOR, VERSION
from indexer.lifecycle import Versions
from indexer.relations import Related, embed
from tests.indexer.helpers import RELATED_REF as REF
from tests.indexer.helpers import related_dataset, services
from tests.indexer.test_lifecycle import DaemonThread
from towers.dataset import Collections, write_mongo

pytestmark = pytest.mark.slow
RENAMED = "cat3"


def _indexed(es: Elasticsearch, index: str) -> dict[str, dict]:
    es.indices.refresh(index=index)
    return {hit["_id"]: hit["_source"] for hit in helpers.scan(es, index=index)}


def test_renaming_a_category_re_embeds_its_items(settings: Settings, es: Elasticsearch,
                                                 related_model: Path) -> None:
    fast = settings.model_copy(update={"rollout": settings.rollout.model_copy(
        update={"follow_interval_s": 0.2})})
    svc = services(fast, es, related_model)
    write_mongo(related_dataset(), svc.db, Collections())
    versions = Versions(svc)
    assert versions.build(REF).done
    index = svc.index_of(REF)
    assert index is not None
    artifact = svc.registry.pull(REF)
    related = Related(svc.db)
    items = list(svc.items.find().sort("_id", 1))
    before = _indexed(es, index)
    expected = embed(artifact, items, related)
    stored = np.asarray([before[str(item["_id"])][VECTOR] for item in items])
    assert np.abs(stored - expected).max() < 1e-5  # joined as in training
    assert np.abs(stored - artifact.embed_items(items)).max() > 1e-3  # the join matters

    daemon = DaemonThread(svc)
    try:
        time.sleep(1.0)  # the daemon's stream is open (it starts at the build's time)
        svc.db["categories"].update_one({"_id": RENAMED}, {"$set": {"name": "Renamed"}})
        renamed = [str(item["_id"]) for item in items if item["category_id"] == RENAMED]
        deadline = time.monotonic() + 30
        while True:
            after = _indexed(es, index)
            if all(after[i][VERSION] > before[i][VERSION] for i in renamed):
                break
            assert time.monotonic() < deadline, daemon.alive()
            time.sleep(0.3)
    finally:
        daemon.stop()
    current = {str(item["_id"]): item for item in svc.items.find()}
    new_vectors = embed(artifact, [current[i] for i in renamed], related)
    for row, item_id in enumerate(renamed):
        assert np.abs(np.asarray(after[item_id][VECTOR]) - new_vectors[row]).max() < 1e-5
        assert np.abs(np.asarray(after[item_id][VECTOR]) -
                      np.asarray(before[item_id][VECTOR])).max() > 1e-4  # a new vector
    others = [i for i in before if i not in renamed]
    assert others and all(after[i][VERSION] == before[i][VERSION] for i in others)
