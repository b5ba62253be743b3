"""Choosing float ``hnsw`` or ``int8_hnsw`` by measuring, not by default.

int8 quantization saves ~75% of vector memory but is known to hurt recall for
low-dimensional dot-product vectors like two-tower outputs. Before a version's index is
created, a sample of real item vectors goes into a scratch int8 index; kNN results there
for the version's own probe queries (user-tower vectors of held-out users, shipped in the
artifact: the real query distribution) are compared with exact top-K over the same
vectors, at the K recall asks for, and int8 is used only if its recall@K clears the
threshold. An artifact without probe queries is probed with mixes of two item vectors.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from elasticsearch import Elasticsearch

if TYPE_CHECKING:
    from towers.artifact import ModelArtifact


log = logging.getLogger("esrec.indexer")
SAMPLE_ITEMS = 2000  # enough for a stable recall estimate, small enough to index in seconds
QUERIES = 50
K = 100  # recall's kNN channel asks for 100 candidates: the depth int8 must keep
MIN_ITEMS = 2 * K  # fewer: nothing worth measuring (or quantizing)


@dataclass(frozen=True)
class QuantizationChoice:
    index_options: str
    int8_recall: float | None  # None: too few items to measure
    sample: int
    queries: str  # "users" (the artifact's probe queries) or "item_mixes"


def probe_queries(artifact: ModelArtifact, vectors: np.ndarray,
                  seed: int = 0) -> tuple[np.ndarray, str]:
    """The artifact's held-out user vectors, or else unit mixes of two item vectors."""
    rng = np.random.default_rng(seed)
    if artifact.probe_queries is not None and len(artifact.probe_queries):
        rows = rng.permutation(len(artifact.probe_queries))[:QUERIES]
        return artifact.probe_queries[rows], "users"
    pairs = rng.integers(0, len(vectors), size=(QUERIES, 2))
    queries = vectors[pairs[:, 0]] + vectors[pairs[:, 1]]
    return queries / np.linalg.norm(queries, axis=1, keepdims=True), "item_mixes"


def measure_int8_recall(es: Elasticsearch, vectors: np.ndarray, queries: np.ndarray,
                        similarity: str) -> float:
    """recall@K of int8_hnsw kNN against exact top-K over the same vectors."""
    k = min(K, len(vectors))
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :k]
    index = f"esrec-quantization-probe-{uuid.uuid4().hex[:8]}"
    es.indices.create(index=index, mappings={"properties": {"vector": {
        "type": "dense_vector", "dims": vectors.shape[1], "index": True,
        "similarity": similarity, "index_options": {"type": "int8_hnsw"}}}})
    try:
        operations: list[dict[str, Any]] = []
        for row, vector in enumerate(vectors):
            operations += [{"index": {"_index": index, "_id": str(row)}}, {"vector": vector}]
        es.bulk(operations=operations, refresh=True, filter_path="errors")
        found = 0
        for query, truth in zip(queries, exact, strict=True):
            hits = es.search(index=index, knn={"field": "vector", "query_vector": query,
                                               "k": k, "num_candidates": 2 * k},
                             size=k, source=False)["hits"]["hits"]
            found += len({int(hit["_id"]) for hit in hits} & set(truth.tolist()))
        return found / (len(queries) * k)
    finally:
        es.indices.delete(index=index, ignore_unavailable=True)


def choose_index_options(es: Elasticsearch, artifact: ModelArtifact,
                         documents: list[dict[str, Any]],
                         threshold: float) -> QuantizationChoice:
    if len(documents) < MIN_ITEMS:
        return QuantizationChoice("hnsw", None, len(documents), "none")  # float: the safe default
    vectors = artifact.embed_items(documents[:SAMPLE_ITEMS])
    queries, kind = probe_queries(artifact, vectors)
    recall = measure_int8_recall(es, vectors, queries, artifact.manifest.similarity)
    choice = "int8_hnsw" if recall >= threshold else "hnsw"
    log.info("index options chosen by measurement", extra={
        "model": artifact.manifest.ref, "int8_recall": round(recall, 4), "k": K,
        "queries": kind, "threshold": threshold, "chosen": choice})
    return QuantizationChoice(choice, recall, len(vectors), kind)
