"""Builds shared by `esrec indexer worker`s (real processes, the relay leading): a version
that joins a related collection is embedded exactly as the single daemon embeds it, and
the relay follows a category rename to the items that join it; a build whose workers are
all SIGKILLed mid-way finishes once workers are back, the index equal to the catalog."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from elasticsearch import Elasticsearch, helpers

from esrec.settings import Settings
from indexer.layout import VECTOR, VERSION
from indexer.relations import Related, embed
from tests.indexer.helpers import (
    CATALOG,
    RELATED_REF,
    VECTOR_TOLERANCE,
    mismatches,
    related_dataset,
    services,
)
from tests.indexer.test_scaleout import V1, Cluster, _leader, _until
from towers.artifact import ModelArtifact
from towers.dataset import Collections, write_mongo
from towers.synth import generate

pytestmark = pytest.mark.slow


def _indexed(es: Elasticsearch, index: str) -> dict[str, dict]:
    es.indices.refresh(index=index)
    return {hit["_id"]: hit["_source"] for hit in helpers.scan(es, index=index)}


@pytest.fixture
def cluster(settings: Settings, tmp_path: Path) -> Iterator[Cluster]:
    # chunks of 25 documents: a build is many chunks, so a kill lands mid-build anywhere
    cluster = Cluster(settings, tmp_path, ESREC_INDEXER__BATCH_MAX_DOCS="25")
    yield cluster
    cluster.end()


def test_a_shared_build_joins_related_collections_and_the_relay_follows_a_rename(
        settings: Settings, es: Elasticsearch, related_model: Path, cluster: Cluster) -> None:
    svc = services(settings, es, related_model)
    write_mongo(related_dataset(), svc.db, Collections())
    for name in ("relay-a", "worker-1", "worker-2"):
        cluster.start(name)
    _until(lambda: _leader(svc) is not None, "a leading relay", cluster, 60)
    built = cluster.esrec("models", "build", RELATED_REF)
    assert built.returncode == 0, built.stderr[-3000:]
    index = svc.index_of(RELATED_REF) or ""
    artifact, related = svc.registry.pull(RELATED_REF), Related(svc.db)
    items = list(svc.items.find().sort("_id", 1))
    before = _indexed(es, index)
    stored = np.asarray([before[str(item["_id"])][VECTOR] for item in items])
    # what the single daemon writes (tests/indexer/test_relations.py): joined as in training
    assert np.abs(stored - embed(artifact, items, related)).max() < VECTOR_TOLERANCE
    assert np.abs(stored - artifact.embed_items(items)).max() > 1e-3  # the join matters

    relay = cluster.processes["relay-a"]
    _until(lambda: "related collections changed" in relay.text(),
           "the relay following the categories", cluster, 60)
    svc.db["categories"].update_one({"_id": "cat3"}, {"$set": {"name": "Renamed"}})
    renamed = [str(item["_id"]) for item in items if item["category_id"] == "cat3"]
    after: dict[str, dict] = {}

    def re_embedded() -> bool:
        after.update(_indexed(es, index))
        return all(after[i][VERSION] > before[i][VERSION] for i in renamed)

    _until(re_embedded, "the renamed category's items re-embedded", cluster, 120)
    current = [svc.items.find_one({"_id": item_id}) for item_id in renamed]
    expected = embed(artifact, current, related)
    got = np.asarray([after[item_id][VECTOR] for item_id in renamed])
    assert np.abs(got - expected).max() < VECTOR_TOLERANCE
    others = [i for i in before if i not in renamed]
    assert others and all(after[i][VERSION] == before[i][VERSION] for i in others)
    cluster.stop()
    for process in cluster.processes.values():
        assert "Traceback" not in process.text(), process.text()[-3000:]


def test_a_build_resumes_after_every_worker_was_killed(
        settings: Settings, es: Elasticsearch, artifact_dir: Path, cluster: Cluster,
        tmp_path: Path) -> None:
    svc = services(settings, es, artifact_dir)
    write_mongo(generate(CATALOG), svc.db, Collections())
    for name in ("relay-a", "worker-1", "worker-2"):
        cluster.start(name)
    _until(lambda: _leader(svc) is not None, "a leading relay", cluster, 60)
    log = tmp_path / "build.log"
    with log.open("wb") as out:
        build = subprocess.Popen([sys.executable, "-m", "esrec", "models", "build", V1],
                                 env=cluster.env, stdout=out, stderr=subprocess.STDOUT)
    try:
        def some_written() -> bool:
            assert build.poll() is None, log.read_text()[-3000:]
            index = svc.index_of(V1)
            return index is not None and svc.checkpoints.chunks(index)[1] >= 3

        # looked for closely: two workers write the 80 chunks in a few seconds
        deadline = time.monotonic() + 180
        while not some_written():
            assert time.monotonic() < deadline, "no chunk written within 180 s"
            time.sleep(0.02)
        for name in ("worker-1", "worker-2"):
            cluster.processes[name].kill()
        index = svc.index_of(V1) or ""
        written = svc.checkpoints.chunks(index)[1]
        time.sleep(3.0)
        assert build.poll() is None, log.read_text()[-3000:]  # it waits for its chunks
        assert svc.checkpoints.chunks(index)[1] == written  # nobody writes them
        for name in ("worker-1", "worker-2"):
            cluster.start(name)
        assert build.wait(300) == 0, log.read_text()[-3000:]
    finally:
        if build.poll() is None:
            build.kill()
    chunks = -(-len(generate(CATALOG).items) // 25)
    assert written < chunks  # the kill landed mid-build
    assert svc.checkpoints.chunks(index) == (chunks, chunks)
    assert mismatches(es, index, svc.items, ModelArtifact.load(artifact_dir)) == []
    assert "Traceback" not in log.read_text()
