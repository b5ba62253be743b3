"""The daemon's contracts: checkpoint order, idle tokens, history lost, outages."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from bson.timestamp import Timestamp
from elastic_transport import ConnectionError as TransportConnectionError
from elasticsearch import Elasticsearch
from pymongo.errors import OperationFailure

from esrec.settings import Settings
from indexer.daemon import MissingCheckpoint
from indexer.lease import Lease
from indexer.lifecycle import Versions
from indexer.offsets import TopicOffsets
from indexer.service import SOURCE
from indexer.sink import TransientBulkError
from indexer.source import ChangeStreamSource, HistoryLost, Position
from runtime.clients import elasticsearch_client
from tests.indexer.helpers import services


def _ready(settings: Settings, es: Elasticsearch, artifact_dir: Path):  # type: ignore[no-untyped-def]
    svc = services(settings, es, artifact_dir)
    svc.items.insert_one({"_id": "seed", "title": "seed"})
    target = svc.new_generation("test-model@1", point_alias=True)
    assert svc.backfill(target).done
    return svc, target


def test_checkpoint_moves_only_after_the_writes_are_acknowledged(
    settings: Settings, es: Elasticsearch, artifact_dir: Path
) -> None:
    svc, target = _ready(settings, es, artifact_dir)
    before = svc.checkpoints.load(target.index)
    svc.items.insert_one({"_id": "x", "title": "x"})
    svc.es = elasticsearch_client(settings.es.model_copy(update={
        "hosts": ["http://127.0.0.1:9"]}), max_retries=0)  # Elasticsearch is gone
    indexer = svc.indexer([target])
    errors: list[BaseException] = []

    def run() -> None:
        try:
            indexer.run()
        except Exception as error:  # what the CLI turns into "will be replayed"
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60  # however slow the stream opens on a busy server
    while svc.metrics.retries.labels("bulk")._value.get() < 2:  # retrying the batch with "x"
        assert time.monotonic() < deadline and thread.is_alive(), errors
        time.sleep(0.1)
    svc.stop.set()
    thread.join(15)
    assert not thread.is_alive()
    assert [type(e) for e in errors] in ([TransientBulkError], [TransportConnectionError])
    assert svc.checkpoints.load(target.index) == before
    assert svc.metrics.retries.labels("bulk")._value.get() >= 1


def test_idle_stream_keeps_its_token_fresh(settings: Settings, es: Elasticsearch,
                                           artifact_dir: Path) -> None:
    svc, target = _ready(settings, es, artifact_dir)
    indexer = svc.indexer([target])
    thread = threading.Thread(target=indexer.run)
    thread.start()
    deadline = time.monotonic() + 15  # the daemon's first idle save, however slow its start
    while (first := svc.checkpoints.load(target.index)) is None or first.token is None:
        assert time.monotonic() < deadline, "the idle daemon saved no resume token"
        time.sleep(0.1)
    svc.db["unrelated"].insert_one({"n": 1})  # the oplog moves, our collection does not
    time.sleep(7.0)  # longer than CAUGHT_UP_WITHIN_S: only fresh idle confirmations count
    (row,) = Versions(svc).status(active_only=True)
    assert (row.lag_s, row.followed) == (0.0, True), row  # a quiet catalog, caught up
    assert indexer.lag_s() == 0.0
    svc.stop.set()
    thread.join(15)
    (stopped,) = Versions(svc).status(active_only=True)
    time.sleep(6.0)  # no daemon any more: the lag grows from the last confirmation
    (later_row,) = Versions(svc).status(active_only=True)
    assert stopped.lag_s == 0.0 and (later_row.lag_s or 0) >= 5, later_row
    later = svc.checkpoints.load(target.index)
    assert first is not None and later is not None and first.token is not None
    assert later.token != first.token
    progress = svc.checkpoints.progress(target.index)
    assert progress is not None and progress.idle and progress.watermark is not None


def test_a_watermark_never_moves_back(settings: Settings, es: Elasticsearch,
                                     artifact_dir: Path) -> None:
    """A daemon taking on a freshly built index restarts from the others' older position
    and saves it for all: the new index's hand-over watermark must stay (or it looks behind
    and fails the freshness gate)."""
    svc, target = _ready(settings, es, artifact_dir)
    progress = svc.checkpoints.progress(target.index)
    assert progress is not None and progress.watermark is not None
    handed_over = progress.watermark
    older = Timestamp(handed_over.time - 60, 1)
    svc.checkpoints.save_all([target.index], Position(None, older), older, idle=False)
    after = svc.checkpoints.progress(target.index)
    assert after is not None and after.watermark == handed_over
    newer = Timestamp(handed_over.time + 5, 1)
    svc.checkpoints.save_all([target.index], Position(None, newer), newer, idle=True)
    after = svc.checkpoints.progress(target.index)
    assert after is not None and after.watermark == newer and after.idle


def test_missing_checkpoint_is_explained(settings: Settings, es: Elasticsearch,
                                         artifact_dir: Path) -> None:
    svc = services(settings, es, artifact_dir)
    target = svc.new_generation("test-model@1", point_alias=True)
    with pytest.raises(MissingCheckpoint, match="esrec indexer backfill"):
        svc.indexer([target]).start_position()


def test_history_lost_is_loud(settings: Settings, es: Elasticsearch, artifact_dir: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """SecantusDB does not raise it for a wiped instance; inject the real server's error."""
    svc, target = _ready(settings, es, artifact_dir)

    def watch(*args: object, **kwargs: object) -> None:
        raise OperationFailure("Resume of change stream was not possible, as the resume "
                               "point may no longer be in the oplog.", code=286)

    monkeypatch.setattr(type(svc.items), "watch", watch)
    with pytest.raises(HistoryLost, match=r"no longer in the oplog.*--on-history-lost=resync"):
        svc.indexer([target]).run()
    with pytest.raises(HistoryLost):
        ChangeStreamSource(svc.items, Position(None, None, 0))


def test_resync_rebuilds_into_a_fresh_index_and_moves_the_aliases(
    settings: Settings, es: Elasticsearch, artifact_dir: Path
) -> None:
    from indexer.layout import resolve_alias, switch_alias, version_alias
    from indexer.lifecycle import Versions
    from tests.indexer.helpers import mismatches
    from towers.artifact import ModelArtifact

    svc, old = _ready(settings, es, artifact_dir)
    switch_alias(es, settings.index.serving_alias, old.index)
    svc.items.insert_many([{"_id": f"x{i}", "title": f"x{i}"} for i in range(50)])
    (fresh,) = Versions(svc).resync([old])
    assert fresh.index != old.index and fresh.index.endswith("-g2")
    assert resolve_alias(es, version_alias(settings.index.prefix, "test-model", "1")) == \
        fresh.index
    assert resolve_alias(es, settings.index.serving_alias) == fresh.index
    assert mismatches(es, fresh.index, svc.items, ModelArtifact.load(artifact_dir)) == []


def test_health_and_metrics_endpoints(settings: Settings, es: Elasticsearch,
                                      artifact_dir: Path) -> None:
    import json
    import urllib.error
    import urllib.request

    from esrec.ports import free_port
    from runtime.service import serve_http

    svc, target = _ready(settings, es, artifact_dir)
    indexer = svc.indexer([target])
    port = free_port()
    svc.health.detail = indexer.detail
    server = serve_http("127.0.0.1", port, svc.metrics.registry, svc.health)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as response:
            assert json.load(response)["status"] == "ok"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
            text = response.read().decode()
        assert "esrec_indexer_events_total" in text and "esrec_indexer_lag_seconds" in text
        svc.health.last_turn -= 60  # a loop that stopped turning
        with pytest.raises(urllib.error.HTTPError) as stalled:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz")
        assert stalled.value.code == 503
    finally:
        server.shutdown()


def test_the_stream_reports_each_documents_bson_size(
    settings: Settings, es: Elasticsearch, artifact_dir: Path
) -> None:
    """The size checked against max_document_bytes, decoded (measured here) or raw (the
    bytes' length): the document's own BSON length either way."""
    import bson
    from bson.binary import Binary

    from indexer.source import server_time

    svc = services(settings, es, artifact_dir)
    start = Position(None, server_time(svc.items), 0)
    documents = [{"_id": "a", "title": "plain"},
                 {"_id": "b", "title": "ünïcødé ✓ 漢字", "tags": ["x", "y"], "n": 2 ** 40},
                 {"_id": "c", "nested": {"deep": [{"k": 1.5}, None, True]},
                  "blob": Binary(b"\x00\x01" * 300)}]
    svc.items.insert_many(documents)
    svc.items.update_one({"_id": "a"}, {"$set": {"title": "plain, longer now"}})
    for decoded in (True, False):
        source = ChangeStreamSource(svc.items, start, await_ms=20, decode_documents=decoded)
        changes = source.poll(10, 1 << 30, 2.0).changes
        source.close()
        expected = {d["_id"]: len(bson.encode(svc.items.find_one({"_id": d["_id"]}) or {}))
                    for d in documents}
        assert [c.doc_id for c in changes] == ["a", "b", "c", "a"]
        assert [c.size_bytes for c in changes[1:]] == [expected["b"], expected["c"],
                                                       expected["a"]]
        assert changes[0].size_bytes == len(bson.encode({"_id": "a", "title": "plain"}))


def test_a_daemon_after_the_workers_resumes_where_they_stopped(
        settings: Settings, es: Elasticsearch, artifact_dir: Path) -> None:
    """A switch back from the distributed mode: the workers' watermark, when newer than
    the daemon's own checkpoint (here the build's hand-over point), starts its stream;
    its own checkpoint when that is newer (README "Scale-out", "When")."""
    svc, target = _ready(settings, es, artifact_dir)
    own = svc.checkpoints.load(target.index)
    assert own is not None and own.cluster_time is not None
    assert svc.indexer([target]).start_position() == own  # no workers: its own
    later = Timestamp(own.cluster_time.time + 30, 1)
    lease = Lease(svc.checkpoints.collection, SOURCE, "relay-a", 10)
    assert lease.acquire()
    lease.save(Position(None, later), later, idle=False, produced={0: 7})
    offsets = TopicOffsets(svc.checkpoints.collection, settings.kafka.topics.item_changes)
    offsets.save([target.index], {0: 6}, {})  # the workers short of the mark: not yet
    assert svc.indexer([target]).start_position() == own
    offsets.save([target.index], {0: 7}, {})
    assert svc.indexer([target]).start_position() == Position(None, later)
    newest = Timestamp(later.time + 30, 1)
    svc.checkpoints.save(target.index, Position(None, newest))
    assert svc.indexer([target]).start_position() == Position(None, newest)
