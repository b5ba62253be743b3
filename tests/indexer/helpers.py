"""Shared by the indexer tests: wiring in-process services and checking index == catalog."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from elasticsearch import Elasticsearch, helpers
from pymongo.collection import Collection

from esrec.settings import Settings
from indexer.layout import DELETED, VECTOR
from indexer.metrics import IndexerMetrics
from indexer.service import Services
from towers.artifact import ModelArtifact
from towers.registry import ModelRegistry

VECTOR_TOLERANCE = 1e-5  # the same exported tower on the same document, float32


def services(settings: Settings, es: Elasticsearch, artifact_dir: Path,
             stop: threading.Event | None = None) -> Services:
    from pymongo import MongoClient

    db = MongoClient(settings.mongo.uri.get_secret_value(), tz_aware=True)[
        settings.mongo.database]
    registry = ModelRegistry(db, settings.mongo.collections.models)
    registry.publish(artifact_dir)
    return Services(settings, es, db, registry, IndexerMetrics(), stop or threading.Event())


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

    return {**os.environ,
            "ESREC_ES__HOSTS": ",".join(settings.es.hosts),
            "ESREC_MONGO__URI": settings.mongo.uri.get_secret_value(),
            "ESREC_MONGO__DATABASE": settings.mongo.database,
            "ESREC_INDEX__PREFIX": settings.index.prefix,
            "ESREC_INDEX__SERVING_ALIAS": settings.index.serving_alias,
            "ESREC_INDEXER__METRICS_PORT": "0",
            **extra}
