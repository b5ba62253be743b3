"""Backfill hands over to the live stream with no gap, and resumes after an interruption;
its scan crosses BSON types in the server's order, fresh and resumed."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from bson.timestamp import Timestamp
from elasticsearch import Elasticsearch
from pymongo.database import Database

from esrec.settings import Settings
from indexer.changes import SnapshotPosition
from indexer.daemon import Indexer
from indexer.service import Services
from indexer.snapshot import SnapshotScan
from indexer.writers import WRITE_AHEAD, WRITERS
from tests.indexer.helpers import mismatches, services, wait_caught_up
from towers.artifact import ModelArtifact
from towers.dataset import Collections, write_mongo
from towers.synth import SynthConfig, generate

CATALOG = SynthConfig(items=1500, users=10, topics=10, mean_interactions=1, seed=5)


def _catch_up(svc: Services, indexer: Indexer, seconds: float = 60.0) -> None:
    """Run the daemon loop in a thread until it has been idle once, then stop it."""
    thread = threading.Thread(target=indexer.run)
    thread.start()
    wait_caught_up(svc, indexer.indices[0], time.time(), seconds,
                   lambda: (thread.is_alive(), "the daemon thread ended"))
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
    report = svc.backfill(target)
    writer.join()
    assert report.done and report.documents >= 1500 - 20
    _catch_up(svc, svc.indexer([target]))
    assert mismatches(es, target.index, svc.items, ModelArtifact.load(artifact_dir)) == []


def test_interrupted_backfill_resumes_after_the_last_id(settings: Settings, es: Elasticsearch,
                                                       artifact_dir: Path) -> None:
    settings = settings.model_copy(update={"indexer": settings.indexer.model_copy(
        update={"batch_max_docs": 100})})
    svc = services(settings, es, artifact_dir)
    write_mongo(generate(CATALOG), svc.db, Collections())
    target = svc.new_generation("test-model@1", point_alias=True)
    saved: list[int] = []

    def stop_after_three(done: int, _total: int) -> None:
        saved.append(done)
        if len(saved) == 3:
            svc.stop.set()

    first = svc.backfill(target, stop_after_three)
    # what was read before the stop is drained: the pages being written, those queued
    # and the one being read at most (a fast scan has them all read by then)
    ahead = WRITERS + WRITE_AHEAD + 1
    assert not first.done and first.documents == saved[-1]
    assert 300 <= first.documents <= 300 + 100 * ahead < 1500
    svc.stop.clear()
    second = svc.backfill(target)
    assert second.done and second.documents == 1500
    assert second.resumed_from is not None and second.operation_time == first.operation_time
    es.indices.refresh(index=target.index)
    assert es.count(index=target.index)["count"] == 1500


def test_the_scan_reads_in_id_order_across_types_and_resumes_mid_type(
        mongo_db: Database) -> None:
    """One cursor for a fresh scan (ints sort before strings); a scan resumed inside the
    ints goes on with them and then with the strings (a ``$gt`` matches one type only)."""
    ids: list[object] = [*range(40), *[f"s{n:02d}" for n in range(30)]]
    mongo_db.items.insert_many([{"_id": i, "n": n} for n, i in enumerate(reversed(ids))])
    start = SnapshotPosition(Timestamp(1, 1), None, 0)
    fresh = SnapshotScan(mongo_db.items, start)
    pages = [fresh.take(25) for _ in range(4)]
    assert [len(page) for page in pages] == [25, 25, 20, 0]
    assert [d["_id"] for page in pages for d in page] == ids
    assert fresh.position == SnapshotPosition(start.operation_time, "s29", 70)

    resumed = SnapshotScan(mongo_db.items, SnapshotPosition(start.operation_time, 29, 30))
    rest = [d["_id"] for page in iter(lambda: resumed.take(25), []) for d in page]
    resumed.close()
    assert rest == ids[30:] and resumed.position.documents == 70
