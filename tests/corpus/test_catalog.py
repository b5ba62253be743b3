"""Bad catalog documents against the real `esrec indexer backfill` and `esrec indexer run`:
each goes to dead letters with a reason a person can act on, every valid document around
it is indexed, and the stage goes on (the process stays up, the checkpoint moves)."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bson
from elasticsearch import Elasticsearch

from esrec.ports import free_port
from esrec.settings import Settings
from indexer.service import Services
from runtime.ids import RULE
from tests.indexer.helpers import cli_env, mismatches, services, wait_caught_up
from tests.processes import EsrecProcess, get_json
from towers.artifact import ModelArtifact

# (document, what its dead letter must say); the _id is made unique per use where it can
BAD: list[tuple[dict[str, Any], str]] = [
    ({"_id": {"compound": 1}, "title": "x"}, "_id: sub-document ids are not supported"),
    ({"_id": 1.5, "title": "x"}, "_id: floating-point ids are not supported"),
    ({"_id": bson.Binary(b"\x00\x01", 5), "title": "x"}, "_id: binary ids are not supported"),
    ({"_id": datetime(2026, 1, 1, tzinfo=UTC), "title": "x"}, "_id: date ids are not supported"),
    ({"_id": True, "title": "x"}, "_id: boolean ids are not supported"),
    ({"_id": None, "title": "x"}, "_id: null ids are not supported"),
    ({"_id": bson.Decimal128("2.5"), "title": "x"}, "_id: decimal ids are not supported"),
    ({"_id": "x" * 600, "title": "x"}, f"_id: {RULE}"),
    ({"_id": "", "title": "x"}, f"_id: {RULE}"),
    ({"_id": "tab\there", "title": "x"}, f"_id: {RULE}"),
    ({"title": "x", "price": math.nan}, "price: expected a finite number, got nan"),
    ({"title": "x", "price": -math.inf}, "price: expected a finite number, got -inf"),
    ({"title": "x", "price": "12"}, "price: expected a finite number, got '12'"),
    ({"title": "x", "price": bson.Decimal128("1.5")}, "price: expected a finite number"),
    ({"title": "x", "tags": 5}, "tags: expected text, got int"),
    ({"title": "x", "tags": ["ok", "nul\x00inside"]}, "tags: a tag must not contain control"),
    ({"title": "x", "tags": ["ok", ""]}, "tags: a tag must have 1 to 256 characters"),
    ({"title": {"en": "x"}}, "title: expected text, got dict"),
    ({"title": "x", "created_at": "yesterday"}, "created_at: 'yesterday' is not an ISO-8601"),
    ({"title": "x", "blob": "b" * 1_200_000}, "over max_document_bytes"),
]


def _variant(document: dict[str, Any], phase: int, n: int) -> dict[str, Any]:
    """A copy whose _id no other insert uses (``phase`` 0: before the backfill, 1: live)."""
    doc_id = document.get("_id", ...)
    if doc_id is ...:
        return {**document, "_id": f"bad-{phase}-{n}"}
    variants = {dict: lambda: {"compound": phase}, float: lambda: 1.25 + phase,
                bson.Binary: lambda: bson.Binary(bytes([phase]), 5),
                datetime: lambda: datetime(2026, 1, 1 + phase, tzinfo=UTC),
                bool: lambda: phase == 0, bson.Decimal128: lambda: bson.Decimal128(
                    f"{7.5 + phase}")}
    if type(doc_id) in variants:
        return {**document, "_id": variants[type(doc_id)]()}
    if isinstance(doc_id, str) and doc_id:  # the over-long id: same length, other start
        return {**document, "_id": f"{phase}" + doc_id[1:]}
    return dict(document)  # null and "" exist once: the live phase deletes the first


def _good(n: int) -> dict[str, Any]:
    return {"_id": f"good-{n}", "title": f"good item {n}", "tags": [f"t{n % 3}"],
            "category": "c1", "price": float(n)}


def _reasons(svc: Services) -> list[str]:
    return [letter["error"] for letter in svc.dead_letters.collection.find()]


def _expect_parked(svc: Services, expected: list[str]) -> None:
    reasons = _reasons(svc)
    for fragment in expected:
        assert any(fragment in reason for reason in reasons), (fragment, reasons)


def test_bad_documents_are_parked_by_backfill_and_by_the_daemon(
        settings: Settings, es: Elasticsearch, artifact_dir: Path, tmp_path: Path) -> None:
    svc = services(settings, es, artifact_dir)
    artifact = ModelArtifact.load(artifact_dir)
    # before the backfill: good documents, the bad ones among them (their ids sort in
    # other BSON brackets than the strings': the scan crosses them all)
    before_bad = [_variant(document, 0, n) for n, (document, _) in enumerate(BAD)]
    good = [_good(n) for n in range(20)]
    for document in [*good[:10], *before_bad, *good[10:]]:
        svc.items.insert_one(document)
    env = cli_env(settings, ESREC_INDEXER__METRICS_PORT=str(free_port()))
    backfill = subprocess.run([sys.executable, "-m", "esrec", "indexer", "backfill",
                               "test-model@1"], env=env, capture_output=True, text=True,
                              timeout=300)
    assert backfill.returncode == 0, backfill.stderr[-2000:]
    assert "Traceback" not in backfill.stderr
    _expect_parked(svc, [reason for _, reason in BAD])
    index = svc.active_targets()[0].index
    es.indices.refresh(index=index)
    indexed = {hit["_id"] for hit in es.search(index=index, size=100, source=False)[
        "hits"]["hits"]}
    assert {str(d["_id"]) for d in good} <= indexed

    daemon = EsrecProcess(env, tmp_path / "daemon.log", "indexer", "run").start()
    try:
        daemon.wait_for("indexer starting")
        parked_before = len(_reasons(svc))
        live_bad = [_variant(document, 1, n) for n, (document, _) in enumerate(BAD)]
        for n, document in enumerate(live_bad):  # each bad one between two good ones
            svc.items.insert_one(_good(100 + 2 * n))
            if document["_id"] in (None, ""):  # one of these may exist: delete it first
                svc.items.delete_one({"_id": document["_id"]})
            svc.items.insert_one(document)
            svc.items.insert_one(_good(101 + 2 * n))
        svc.items.update_one({"_id": "good-1"}, {"$set": {"price": "not a number"}})
        svc.items.delete_one({"_id": {"compound": 1}})  # a delete of an unsupported id
        svc.items.update_one({"_id": "good-2"}, {"$set": {"title": "edited"}})
        wait_caught_up(svc, index, time.time(), 120, lambda: (daemon.alive(), daemon.text()))
        port = int(env["ESREC_INDEXER__METRICS_PORT"])
        assert get_json(f"http://127.0.0.1:{port}/healthz")[0] == 200
        assert daemon.alive()
    finally:
        daemon.stop()
    letters = _reasons(svc)[parked_before:]
    # each bad insert, the bad update, the deletes of the null and "" ids, the odd delete
    assert len(letters) == len(BAD) + 4, letters
    for _, reason in BAD:
        assert any(reason in letter for letter in letters), reason
    assert "Traceback" not in daemon.text()
    # the only differences from the catalog: what cannot be indexed, and good-1, whose
    # last valid version stays indexed until it is fixed (its dead letter says why)
    expected = {str(d["_id"]) for d in [*before_bad, *live_bad]} | {"good-1"}
    problems = mismatches(es, index, svc.items, artifact)
    assert {problem.rsplit(": ", 1)[0] for problem in problems} <= expected, problems
    assert es.get(index=index, id="good-2")["_source"]["title"] == "edited"


def test_ids_of_another_kind_are_parked_never_overwriting(
        settings: Settings, es: Elasticsearch, artifact_dir: Path, tmp_path: Path) -> None:
    """1 and "1", ObjectId(x) and "x" would share an Elasticsearch id: in a catalog of
    string ids, the integer and ObjectId ones are parked with the fix, by the backfill and
    by the daemon, and every string document keeps its own Elasticsearch document."""
    svc = services(settings, es, artifact_dir)
    oid = bson.ObjectId()
    strings = [{"_id": str(n), "title": f"string {n}"} for n in range(1, 21)]
    strings.append({"_id": str(oid), "title": "hex string"})
    intruders = [{"_id": 1, "title": "int one"}, {"_id": oid, "title": "object id"}]
    svc.items.insert_many([*intruders, *strings])  # the ints sort first in a scan
    env = cli_env(settings, ESREC_INDEXER__METRICS_PORT=str(free_port()))
    backfill = subprocess.run([sys.executable, "-m", "esrec", "indexer", "backfill",
                               "test-model@1"], env=env, capture_output=True, text=True,
                              timeout=300)
    assert backfill.returncode == 0, backfill.stderr[-2000:]
    _expect_parked(svc, ["_id: integer id in a catalog of string ids",
                         "_id: objectid id in a catalog of string ids",
                         "give this document an _id of the catalog's kind (string)"])
    index = svc.active_targets()[0].index
    daemon = EsrecProcess(env, tmp_path / "daemon.log", "indexer", "run").start()
    try:
        daemon.wait_for("indexer starting")
        svc.items.insert_one({"_id": 2, "title": "int two"})
        svc.items.update_one({"_id": 1}, {"$set": {"title": "int one, edited"}})
        svc.items.update_one({"_id": "2"}, {"$set": {"title": "string 2, edited"}})
        svc.items.delete_one({"_id": 1})  # must not tombstone the string "1"
        wait_caught_up(svc, index, time.time(), 120, lambda: (daemon.alive(), daemon.text()))
    finally:
        daemon.stop()
    es.indices.refresh(index=index)
    sources = {hit["_id"]: hit["_source"] for hit in es.search(
        index=index, size=100, query={"match_all": {}})["hits"]["hits"]}
    assert sources["1"]["title"] == "string 1" and not sources["1"].get("deleted")
    assert sources["2"]["title"] == "string 2, edited"
    assert sources[str(oid)]["title"] == "hex string"
    assert len(sources) == len(strings)
    letters = svc.dead_letters.collection
    assert letters.count_documents({"doc_id": 2, "op": "upsert"}) == 1
    assert letters.count_documents({"doc_id": 1, "op": "delete"}) == 1
    assert "Traceback" not in daemon.text()
