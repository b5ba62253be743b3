"""The pipeline against real servers: versions, stale writes, tombstones, dead letters."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import pytest
from bson.timestamp import Timestamp
from elasticsearch import Elasticsearch

from esrec.settings import Settings
from indexer.changes import Change
from indexer.dead_letters import ErrorBudgetExceeded
from indexer.layout import DELETED, VECTOR, VERSION, model_of
from indexer.versioning import external_version
from tests.indexer.helpers import services

T = Timestamp(1_795_000_000, 1)


def _v(inc: int) -> int:
    return external_version(Timestamp(T.time, inc), 1)


def test_writes_settle_to_the_newest_version(settings: Settings, es: Elasticsearch,
                                             artifact_dir: Path) -> None:
    svc = services(settings, es, artifact_dir)
    target = svc.new_generation("test-model@1", point_alias=True)
    pipeline = svc.pipeline([target])
    doc = {"_id": "a", "title": "new", "tags": ["x"], "category": "c"}
    pipeline.process([Change("upsert", "a", _v(5), T, doc)])
    pipeline.process([Change("upsert", "a", _v(3), T, {**doc, "title": "old"}),  # a replay
                      Change("upsert", "b", _v(4), T, {**doc, "_id": "b"}),
                      Change("delete", "b", _v(6), T)])
    pipeline.process([Change("upsert", "b", _v(5), T, {**doc, "_id": "b"})])  # late, older
    es.indices.refresh(index=target.index)
    a = es.get(index=target.index, id="a")["_source"]
    b = es.get(index=target.index, id="b")["_source"]
    assert (a["title"], a[VERSION], len(a[VECTOR])) == ("new", _v(5), 32)
    assert b[DELETED] is True and VECTOR not in b  # the tombstone outlived the older write
    assert svc.metrics.stale._value.get() == 2
    assert model_of(es, target.index)["model"] == "test-model@1"
    refresh = es.indices.get_settings(index=target.index)[target.index]["settings"]["index"]
    assert refresh["refresh_interval"] == settings.index.refresh_interval


def test_bad_documents_are_parked_and_the_batch_goes_on(settings: Settings, es: Elasticsearch,
                                                        artifact_dir: Path) -> None:
    svc = services(settings, es, artifact_dir)
    target = svc.new_generation("test-model@1", point_alias=True)
    # an index whose mapping disagrees with a document: Elasticsearch rejects that item
    es.indices.put_mapping(index=target.index, properties={"brand": {"type": "long"}})
    projecting_brand = settings.model_copy(update={"indexer": settings.indexer.model_copy(
        update={"projection": {**settings.indexer.projection, "brand": "keyword"}})})
    pipeline = services(projecting_brand, es, artifact_dir).pipeline([target])
    pipeline.process([
        Change("upsert", "ok", _v(1), T, {"_id": "ok", "title": "fine", "brand": "7"}),
        Change("upsert", "nan", _v(2), T, {"_id": "nan", "title": "x", "price": float("nan")}),
        Change("upsert", "es", _v(3), T, {"_id": "es", "title": "x", "brand": "acme"}),
    ])
    es.indices.refresh(index=target.index)
    assert es.exists(index=target.index, id="ok")
    assert not es.exists(index=target.index, id="nan") and not es.exists(index=target.index,
                                                                          id="es")
    parked = {d["doc_id"]: d for d in svc.db[settings.mongo.collections.dead_letters].find()}
    assert parked["nan"]["stage"] == "validate"
    assert "price: expected a finite number" in parked["nan"]["error"]
    assert parked["es"]["stage"] == "elasticsearch"
    assert parked["es"]["error"].startswith("400 ")
    assert parked["es"]["index"] == target.index and "acme" in parked["es"]["document"]


def test_error_budget_stops_a_stream_that_mostly_fails(settings: Settings, es: Elasticsearch,
                                                       artifact_dir: Path) -> None:
    svc = services(settings, es, artifact_dir)
    target = svc.new_generation("test-model@1", point_alias=True)
    pipeline = svc.pipeline([target])
    pipeline.dead_letters.recent = deque(maxlen=20)  # a 20-event window, 5% budget
    good = [Change("upsert", f"g{i}", _v(i + 1), T, {"_id": f"g{i}", "title": "ok"})
            for i in range(19)]
    pipeline.process([*good, Change("upsert", "bad", _v(30), T, {"_id": "bad", "price": "x"})])
    with pytest.raises(ErrorBudgetExceeded, match=r"2 of the last 20 events .* \(budget 5%\)"):
        pipeline.process([Change("upsert", "bad2", _v(31), T, {"_id": "bad2", "price": "y"})])


def test_purge_removes_only_old_tombstones(settings: Settings, es: Elasticsearch,
                                           artifact_dir: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from indexer.layout import purge_tombstones

    svc = services(settings, es, artifact_dir)
    target = svc.new_generation("test-model@1", point_alias=True)
    pipeline = svc.pipeline([target])
    pipeline.process([Change("upsert", "live", _v(1), T, {"_id": "live", "title": "x"}),
                      Change("delete", "gone", _v(2), T)])
    assert purge_tombstones(es, target.index, datetime.now(UTC) - timedelta(hours=1)) == 0
    assert purge_tombstones(es, target.index, datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert es.exists(index=target.index, id="live")
    assert not es.exists(index=target.index, id="gone")
    assert not svc.checkpoints.backfill_in_progress(target.index)
    svc.checkpoints.start_backfill(target.index, T)
    assert svc.checkpoints.backfill_in_progress(target.index)
