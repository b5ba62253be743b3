"""Backfill hands over to the live stream with no gap, and resumes after an interruption."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from elasticsearch import Elasticsearch

from esrec.settings import Settings
from indexer.backfill import backfill
from tests.indexer.helpers import mismatches, services
from towers.artifact import ModelArtifact
from towers.dataset import Collections, write_mongo
from towers.synth import SynthConfig, generate

CATALOG = SynthConfig(items=1500, users=10, topics=10, mean_interactions=1, seed=5)


def _catch_up(indexer, seconds: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    """Run the daemon loop in a thread until it has been idle once, then stop it."""
    thread = threading.Thread(target=indexer.run)
    thread.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        checkpoint = indexer.checkpoints.describe(indexer.indices[0]) or {}
        if checkpoint.get("caught_up_at") and checkpoint["caught_up_at"].timestamp() > (
                time.time() - 0.5):
            break
        time.sleep(0.2)
    indexer.stop.set()
    thread.join(30)
    assert not thread.is_alive()


def test_changes_during_backfill_appear_once_streamed(settings: Settings, es: Elasticsearch,
                                                      artifact_dir: Path) -> None:
    svc = services(settings, es, artifact_dir)
    write_mongo(generate(CATALOG), svc.db, Collections())
    target = svc.new_generation("test-model@1", point_alias=True)
    writer_done = threading.Event()

    def write_during_backfill() -> None:
        for i in range(200):
            svc.items.update_one({"_id": f"i{i * 7}"}, {"$set": {"title": f"edited {i}"}})
            if i % 10 == 0:
                svc.items.delete_one({"_id": f"i{i * 7 + 1}"})
                svc.items.insert_one({"_id": f"new{i}", "title": f"new {i}", "tags": ["x"]})
        writer_done.set()

    writer = threading.Thread(target=write_during_backfill)
    writer.start()
    report = backfill(svc.items, svc.pipeline([target]), svc.checkpoints, target.index,
                      svc.stop, batch_size=100, progress=False)
    writer.join()
    assert report.done and report.documents >= 1500 - 20
    _catch_up(svc.indexer([target]))
    assert mismatches(es, target.index, svc.items, ModelArtifact.load(artifact_dir)) == []


def test_interrupted_backfill_resumes_after_the_last_id(settings: Settings, es: Elasticsearch,
                                                       artifact_dir: Path) -> None:
    svc = services(settings, es, artifact_dir)
    write_mongo(generate(CATALOG), svc.db, Collections())
    target = svc.new_generation("test-model@1", point_alias=True)
    pipeline = svc.pipeline([target])
    original = pipeline.process
    calls = 0

    def stop_after_three(changes):  # type: ignore[no-untyped-def]
        nonlocal calls
        original(changes)
        calls += 1
        if calls == 3:
            svc.stop.set()

    pipeline.process = stop_after_three  # type: ignore[method-assign]
    first = backfill(svc.items, pipeline, svc.checkpoints, target.index, svc.stop,
                     batch_size=100, progress=False)
    assert (first.done, first.documents) == (False, 300)
    svc.stop.clear()
    second = backfill(svc.items, svc.pipeline([target]), svc.checkpoints, target.index,
                      svc.stop, batch_size=100, progress=False)
    assert second.done and second.documents == 1500
    assert second.resumed_from is not None and second.operation_time == first.operation_time
    es.indices.refresh(index=target.index)
    assert es.count(index=target.index)["count"] == 1500
