"""The gates a model version's index must pass before it serves.

    coverage    the index holds every live catalog item (and no deleted one)
    freshness   the backfill finished and the stream checkpoint is within max_lag_s
    vectors     a sample re-embedded now with the version's item tower equals what is stored
    ann         kNN top-k from Elasticsearch overlaps the exact top-k over the same vectors
    latency     p99 of those kNN queries within max_p99_ms
    probe       (after a promote) the alias resolves to the version, user kNN answers

The ANN queries are re-embedded catalog items, the query distribution of the i2i channel;
the exact top-k is a brute-force dot product over every live vector of the index.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from bson.timestamp import Timestamp
from elasticsearch import Elasticsearch, helpers

from indexer.changes import es_id
from indexer.layout import DELETED, LIVE, VECTOR, knn_clause, model_of, resolve_alias
from indexer.pipeline import Target
from indexer.relations import Related, embed
from indexer.service import Services
from indexer.settings import RolloutSettings
from indexer.source import server_time
from indexer.versioning import cluster_time_of

PROGRESS_POLL_S = 0.2  # how often the vectors gate re-reads an index's progress


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    detail: str


def validate(services: Services, target: Target) -> list[GateResult]:
    """Every gate for ``target``; the version may serve only if all passed."""
    settings = services.settings.rollout
    services.es.indices.refresh(index=target.index)
    sample = list(services.items.aggregate([{"$sample": {"size": settings.vector_sample}}]))
    return [coverage(services, target, settings), freshness(services, target, settings),
            vectors(services, target, sample, settings),
            *ann_and_latency(services.es, target, sample, settings)]


def coverage(services: Services, target: Target, settings: RolloutSettings) -> GateResult:
    catalog = services.items.count_documents({})
    indexed = services.es.count(index=target.index, query=LIVE)["count"]
    allowed = (1 - settings.min_coverage) * catalog
    return GateResult("coverage", abs(catalog - indexed) <= allowed,
                      f"{indexed} live documents indexed for {catalog} catalog items "
                      f"(allowed difference {allowed:.0f})")


def freshness(services: Services, target: Target, settings: RolloutSettings) -> GateResult:
    if not services.checkpoints.backfill_finished(target.index):
        return GateResult("freshness", False, "the backfill has not finished")
    lag = lag_of(services, target.index)
    if lag is None or lag > settings.max_lag_s:
        return GateResult("freshness", False, f"lag {lag}s > {settings.max_lag_s:g}s: is "
                          "`esrec indexer run` (or are its workers) following this version?")
    return GateResult("freshness", True, f"lag {lag}s <= {settings.max_lag_s:g}s")


def lag_of(services: Services, index: str) -> float | None:
    """How far ``index`` is behind the catalog (None: unknown, or past the marks kept)."""
    progress = services.progress(index)
    return progress.lag_s(server_time(services.items)) if progress else None


def vectors(services: Services, target: Target, sample: list[dict[str, Any]],
            settings: RolloutSettings) -> GateResult:
    """A sampled item whose stored vector differs may have changed after the index last
    saw it: it is read again, and compared once the index holds every change up to that
    read (its progress watermark), for as long as the freshness gate lets an index lag
    (``max_lag_s``). Stored newer than the read (changed again): read once more."""
    es, tolerance = services.es, settings.vector_tolerance
    wrong = _vector_mismatches(services, target, sample, tolerance)
    deadline = time.monotonic() + settings.max_lag_s
    while wrong and time.monotonic() < deadline:
        read_at = server_time(services.items)
        again = list(services.items.find({"_id": {"$in": wrong}}))
        if not _holds(services, target.index, read_at, deadline):
            break  # behind by more than max_lag_s: what differs counts as wrong
        es.indices.refresh(index=target.index)
        wrong = _vector_mismatches(services, target, again, tolerance, read_at)
    return GateResult("vectors", not wrong,
                      f"{len(sample) - len(wrong)}/{len(sample)} sampled items match the "
                      f"stored vector within {tolerance:g}"
                      + (f"; differ: {', '.join(map(str, wrong[:5]))}" if wrong else ""))


def _holds(services: Services, index: str, cluster_time: Timestamp, deadline: float) -> bool:
    """Wait until ``index`` holds every change up to ``cluster_time``; False at the
    deadline."""
    while True:
        progress = services.progress(index)
        if progress is not None and progress.watermark is not None \
                and progress.watermark >= cluster_time:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(PROGRESS_POLL_S)


def _vector_mismatches(services: Services, target: Target, sample: list[dict[str, Any]],
                       tolerance: float, read_at: Timestamp | None = None) -> list[Any]:
    """Ids whose stored vector is not the one embedded from ``sample``'s document, or
    (with ``read_at``) was written from a change after that read."""
    if not sample:
        return []
    es = services.es
    expected = embed(target.artifact, sample, Related(services.db))
    stored = es.mget(index=target.index, ids=[es_id(d["_id"]) for d in sample],
                     source_includes=[VECTOR, DELETED])["docs"]
    wrong = []
    for document, row, hit in zip(sample, expected, stored, strict=True):
        source = hit.get("_source") or {}
        newer = read_at is not None and hit.get("found") and \
            cluster_time_of(int(hit["_version"])) > read_at
        if (newer or not hit.get("found") or source.get(DELETED)
                or np.abs(np.asarray(source[VECTOR]) - row).max() > tolerance):
            wrong.append(document["_id"])
    return wrong


def ann_and_latency(es: Elasticsearch, target: Target, sample: list[dict[str, Any]],
                    settings: RolloutSettings) -> list[GateResult]:
    ids, matrix = _live_vectors(es, target.index)
    queries = target.artifact.embed_items(sample[:settings.ann_queries])
    k = min(settings.ann_k, len(ids))
    if k == 0 or len(queries) == 0:
        return [GateResult("ann", False, "no vectors to query"),
                GateResult("latency", False, "no vectors to query")]
    overlaps, latencies = [], []
    for query in queries:
        exact = {ids[i] for i in np.argsort(-(matrix @ query))[:k]}
        started = time.perf_counter()
        response = es.search(index=target.index, size=k, source=False,
                             knn=knn_clause(query, k, max(100, 4 * k)))
        latencies.append((time.perf_counter() - started) * 1000)
        overlaps.append(len(exact & {hit["_id"] for hit in response["hits"]["hits"]}) / k)
    overlap, p99 = float(np.mean(overlaps)), float(np.percentile(latencies, 99))
    return [GateResult("ann", overlap >= settings.min_ann_overlap,
                       f"kNN top-{k} overlaps exact top-{k} by {overlap:.3f} over "
                       f"{len(queries)} queries (min {settings.min_ann_overlap:g})"),
            GateResult("latency", p99 <= settings.max_p99_ms,
                       f"kNN p99 {p99:.1f} ms (max {settings.max_p99_ms:g} ms)")]


def _live_vectors(es: Elasticsearch, index: str) -> tuple[list[str], np.ndarray]:
    ids, rows = [], []
    for hit in helpers.scan(es, index=index, query={"query": LIVE}, _source=[VECTOR]):
        ids.append(hit["_id"])
        rows.append(hit["_source"][VECTOR])
    return ids, np.asarray(rows, np.float32).reshape(len(rows), -1)


def probe_serving(services: Services, expected: str, queries: int = 5) -> GateResult:
    """After a promote: the alias resolves to ``expected``'s index and answers kNN in time."""
    es, settings = services.es, services.settings.rollout
    index = resolve_alias(es, services.settings.index.serving_alias)
    model = model_of(es, index).get("model") if index else None
    if model != expected:
        return GateResult("probe", False, f"the serving alias resolves to {index} ({model}), "
                                          f"not {expected}")
    artifact = services.registry.pull(expected)
    users = list(services.db[services.settings.mongo.collections.users].find().limit(queries))
    latencies, empty = [], 0
    for vector in artifact.embed_users(users or [{}]):
        started = time.perf_counter()
        hits = es.search(index=index, size=10, source=False,
                         knn=knn_clause(vector, 10, 100))["hits"]["hits"]
        latencies.append((time.perf_counter() - started) * 1000)
        empty += not hits
    p99 = float(np.percentile(latencies, 99))
    passed = empty == 0 and p99 <= settings.max_p99_ms
    return GateResult("probe", passed, f"{len(latencies)} user kNN queries on {index}: "
                      f"{empty} empty, p99 {p99:.1f} ms (max {settings.max_p99_ms:g} ms)")
