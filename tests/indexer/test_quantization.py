"""int8_hnsw is used only when its measured recall on real item vectors is good enough."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from esrec.settings import Settings
from indexer.layout import VECTOR, model_of
from indexer.quantization import choose_index_options
from tests.indexer.helpers import services
from towers.artifact import ModelArtifact
from towers.dataset import Collections, write_mongo
from towers.synth import SynthConfig, generate


@pytest.fixture
def catalog(settings: Settings, es: Elasticsearch, artifact_dir: Path):  # type: ignore[no-untyped-def]
    svc = services(settings, es, artifact_dir)
    write_mongo(generate(SynthConfig(items=1000, users=5, topics=10, mean_interactions=1)),
                svc.db, Collections())
    return svc


def test_recall_is_measured_and_decides(catalog, es: Elasticsearch,  # type: ignore[no-untyped-def]
                                        artifact_dir: Path) -> None:
    artifact = ModelArtifact.load(artifact_dir)
    documents = list(catalog.items.find())
    strict = choose_index_options(es, artifact, documents, threshold=1.01)
    assert strict.index_options == "hnsw" and strict.sample == 1000
    assert strict.queries == "users"  # the artifact's held-out user vectors
    assert strict.int8_recall is not None and 0.3 < strict.int8_recall <= 1.0
    lenient = choose_index_options(es, artifact, documents, threshold=0.0)
    assert lenient.index_options == "int8_hnsw"
    assert choose_index_options(es, artifact, documents[:5], 0.0).index_options == "hnsw"
    without = replace(artifact, probe_queries=None)  # an artifact from before probe queries
    assert choose_index_options(es, without, documents, 0.0).queries == "item_mixes"
    assert not es.indices.get(index="esrec-quantization-probe-*", allow_no_indices=True)


def test_auto_records_the_measurement_in_the_mapping(catalog, es: Elasticsearch) -> None:  # type: ignore[no-untyped-def]
    target = catalog.new_generation("test-model@1", point_alias=True)
    meta = model_of(es, target.index)
    chosen = "int8_hnsw" if meta["int8_recall"] >= 0.99 else "hnsw"
    assert meta["int8_recall_k"] == 100 and meta["recall_queries"] == "users"
    assert meta["index_options"] == chosen and meta["recall_sample"] == 1000
    field = es.indices.get_mapping(index=target.index)[target.index]["mappings"]["properties"][
        VECTOR]
    assert field["index_options"]["type"] == chosen
