"""Shared by the indexer tests: wiring in-process services and checking index == catalog."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from elasticsearch import Elasticsearch, helpers
from pymongo import MongoClient
from pymongo.collection import Collection

from esrec.settings import Settings, server_environment
from indexer.layout import DELETED, VECTOR
from indexer.service import Services
from runtime.clients import mongo_client
from tests.conftest import SMALL
from towers.artifact import ModelArtifact
from towers.dataset import Dataset
from towers.synth import SynthConfig, generate

VECTOR_TOLERANCE = 1e-5  # the same exported tower on the same document, float32
CATALOG = SynthConfig(items=2000, users=10, topics=10, mean_interactions=1, seed=11)
RELATED_REF = "related-model@1"  # conftest.related_model: items joined with categories


def related_dataset() -> Dataset:
    """The small dataset with each item's category name in a categories collection
    (items.category_id -> categories._id)."""
    dataset = generate(SMALL)
    for item in dataset.items:
        item["category_id"] = item["category"]
    dataset.related = {"categories": [{"_id": f"cat{n}", "name": f"Category {n}"}
                                      for n in range(SMALL.topics)]}
    return dataset


def services(settings: Settings, es: Elasticsearch, artifact_dir: Path,
             stop: threading.Event | None = None) -> Services:
    svc = Services.create(settings, es, mongo_client(settings.mongo)[settings.mongo.database],
                          stop)
    svc.registry.publish(artifact_dir)
    return svc


def mismatches(es: Elasticsearch, index: str, items: Collection,
               artifact: ModelArtifact) -> list[str]:
    """Every way the index differs from the catalog (empty when they agree)."""
    es.indices.refresh(index=index)
    indexed = {hit["_id"]: hit["_source"] for hit in helpers.scan(es, index=index)}
    catalog = {str(d["_id"]): d for d in items.find()}
    problems = []
    live = [doc_id for doc_id in catalog if doc_id in indexed]
    problems += [f"{doc_id}: missing" for doc_id in catalog if doc_id not in indexed]
    problems += [f"{doc_id}: deleted in Mongo, live in ES" for doc_id, source in indexed.items()
                 if doc_id not in catalog and not source.get(DELETED)]
    if live:
        expected = artifact.embed_items([catalog[doc_id] for doc_id in live])
        for row, doc_id in enumerate(live):
            source = indexed[doc_id]
            if source.get(DELETED):
                problems.append(f"{doc_id}: tombstoned but present in Mongo")
            elif source.get("title") != catalog[doc_id].get("title"):
                problems.append(f"{doc_id}: stale title {source.get('title')!r}")
            elif np.abs(np.asarray(source[VECTOR]) - expected[row]).max() > VECTOR_TOLERANCE:
                problems.append(f"{doc_id}: stale vector")
    return problems


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for an `esrec` subprocess aimed at the same servers and names."""
    import os

    return {**os.environ, **server_environment(settings), "ESREC_INDEXER__METRICS_PORT": "0",
            "ESREC_ROLLOUT__WATCH_S": str(settings.rollout.watch_s), **extra}


def write_changes(items: Collection, count: int, seed: int, pace_s: float = 0.0) -> int:
    """Random catalog changes; returns how many were made (a transaction counts its ops).

    Written without retryable writes: the MongoDB stand-in scans (and past 10k sorts) its
    table of retryable-write records on every write, so the tests' own load would slow
    every later write of the session (see the README's local stack gaps)."""
    source: MongoClient = items.database.client
    hosts = [f"{host}:{port}" for host, port in source.topology_description.server_descriptions()]
    client: MongoClient = MongoClient(hosts, replicaSet=source.options.replica_set_name,
                                      retryWrites=False, tz_aware=True)
    try:
        return _write_changes(client[items.database.name][items.name], count, seed, pace_s)
    finally:
        client.close()


def _write_changes(items: Collection, count: int, seed: int, pace_s: float) -> int:
    rng = random.Random(seed)
    client: MongoClient = items.database.client
    made, fresh = 0, 0
    while made < count:
        roll = rng.random()
        doc_id = f"i{rng.randrange(CATALOG.items)}"
        if roll < 0.40:
            items.update_one({"_id": doc_id}, {"$set": {"title": f"t{made}",
                                                        "tags": [f"t{made % 9}-tag1"]}})
            made += 1
        elif roll < 0.55:
            items.replace_one({"_id": doc_id}, {"title": f"r{made}", "category": "cat3"},
                              upsert=True)
            made += 1
        elif roll < 0.70:
            items.insert_one({"_id": f"n{seed}-{fresh}", "title": f"n{made}", "tags": ["x"]})
            fresh += 1
            made += 1
        elif roll < 0.85:
            items.delete_one({"_id": doc_id})
            made += 1
        else:
            with client.start_session() as session, session.start_transaction():
                items.update_one({"_id": doc_id}, {"$set": {"title": f"a{made}"}},
                                 upsert=True, session=session)
                items.update_one({"_id": doc_id}, {"$set": {"title": f"b{made}"}},
                                 session=session)
                items.delete_one({"_id": f"i{rng.randrange(CATALOG.items)}"}, session=session)
            made += 3
        if pace_s:
            time.sleep(pace_s)
    return made


def wait_caught_up(svc: Services, index: str, after: float, timeout_s: float,
                   alive: Callable[[], tuple[bool, str]]) -> None:
    """Until the daemon saw the stream idle after ``after`` (epoch s) with ``index`` in step."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ok, log = alive()
        assert ok, log
        progress = svc.checkpoints.progress(index)
        if progress and progress.idle and progress.saved_at and \
                progress.saved_at.timestamp() > after:
            return
        time.sleep(0.2)
    pytest.fail(f"{index} not caught up after {timeout_s}s:\n{alive()[1]}")


class ServingProbe:
    """Recall-like kNN queries on three threads through the serving alias, each checking
    that the user vector and the index it queries come from one model version."""

    def __init__(self, svc: Services, es: Elasticsearch) -> None:
        from recall.serving import ServingResolver

        self.resolver = ServingResolver(es, svc.registry, svc.settings.index.serving_alias,
                                        ttl_s=0.02)
        self.es = es
        self.users = list(svc.db["users"].find().limit(5)) or [{}]
        self.halt = threading.Event()
        self.failures: list[str] = []
        self.answered: dict[str, int] = {}
        self.threads = [threading.Thread(target=self._load, daemon=True) for _ in range(3)]

    def __enter__(self) -> ServingProbe:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()  # also when the test failed first: no probe outlives its test

    def _load(self) -> None:
        from indexer.layout import LIVE, knn_clause, model_of

        while not self.halt.is_set():
            try:
                serving = self.resolver.current()
                vector = serving.artifact.embed_users(self.users[:1])[0]
                hits = self.es.search(index=serving.index, size=10, source=False,
                                      knn=knn_clause(vector, 10, 50, LIVE))["hits"]["hits"]
                meta = model_of(self.es, serving.index)
                if not hits or any(hit["_index"] != serving.index for hit in hits):
                    self.failures.append(f"bad hits from {serving.index}: {hits[:2]}")
                elif meta["model"] != serving.model or meta["dims"] != len(vector):
                    self.failures.append(f"{serving.model} vector on {serving.index}")
                else:
                    self.answered[serving.model] = self.answered.get(serving.model, 0) + 1
            except Exception as error:
                self.failures.append(repr(error))

    def stop(self) -> tuple[list[str], dict[str, int]]:
        self.halt.set()
        for thread in self.threads:
            thread.join()
        return self.failures, self.answered
