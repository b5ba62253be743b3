"""Choosing float ``hnsw`` or ``int8_hnsw`` by measuring, not by default.

int8 quantization saves ~75% of vector memory but is known to hurt recall for
low-dimensional dot-product vectors like two-tower outputs. Before a version's index is
created, a sample of real item vectors goes into a scratch int8 index; kNN results there
are compared with exact top-k over the same vectors, and int8 is used only if its
recall@k clears the threshold.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from elasticsearch import Elasticsearch

from towers.artifact import ModelArtifact

log = logging.getLogger("esrec.indexer")
SAMPLE_ITEMS = 2000  # enough for a stable recall estimate, small enough to index in seconds
QUERIES = 50
K = 10


@dataclass(frozen=True)
class QuantizationChoice:
    index_options: str
    int8_recall: float | None  # None: too few items to measure
    sample: int


def measure_int8_recall(es: Elasticsearch, vectors: np.ndarray, similarity: str,
                        seed: int = 0) -> float:
    """recall@K of int8_hnsw kNN against exact top-K, on query vectors that mix two items."""
    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, len(vectors), size=(QUERIES, 2))
    queries = vectors[pairs[:, 0]] + vectors[pairs[:, 1]]
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :K]
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
                                               "k": K, "num_candidates": 10 * K},
                             size=K, source=False)["hits"]["hits"]
            found += len({int(hit["_id"]) for hit in hits} & set(truth.tolist()))
        return found / (QUERIES * K)
    finally:
        es.indices.delete(index=index, ignore_unavailable=True)


def choose_index_options(es: Elasticsearch, artifact: ModelArtifact,
                         documents: list[dict[str, Any]],
                         threshold: float) -> QuantizationChoice:
    if len(documents) < 2 * K:
        return QuantizationChoice("hnsw", None, len(documents))  # float is the safe default
    vectors = artifact.embed_items(documents[:SAMPLE_ITEMS])
    recall = measure_int8_recall(es, vectors, artifact.manifest.similarity)
    choice = "int8_hnsw" if recall >= threshold else "hnsw"
    log.info("index options chosen by measurement", extra={
        "model": artifact.manifest.ref, "int8_recall_at_10": round(recall, 3),
        "threshold": threshold, "chosen": choice})
    return QuantizationChoice(choice, recall, len(vectors))
